//! `kind = "tcp"`: a TCP connect to `address`.

use std::time::Instant;

use healthd_models::ComponentType;
use tokio::net::TcpStream;

use crate::checks::{elapsed_ms, io_category, BoxFuture, Check, Observation, RESPONSE_TIME};

pub struct TcpCheck {
    name: String,
    address: String,
}

impl TcpCheck {
    pub fn new(name: &str, address: &str) -> Self {
        TcpCheck { name: name.to_string(), address: address.to_string() }
    }
}

impl Check for TcpCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let started = Instant::now();
            match TcpStream::connect(&self.address).await {
                Ok(_) => Observation::pass(vec![elapsed_ms(started)]),
                Err(error) => {
                    tracing::warn!(check = %self.name, %error, "tcp connect failed");
                    Observation::fail(io_category(&error))
                }
            }
        })
    }
}
