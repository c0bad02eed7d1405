//! `kind = "tcp"`: a TCP connect to `address`.

use std::sync::Arc;
use std::time::Instant;

use healthd_models::ComponentType;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::base::policy::Policy;
use crate::checks::util::categories::io_category;
use crate::checks::{
    elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation, RESPONSE_TIME,
};

pub const KIND: Kind = Kind::new("tcp", &["address"], parse);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpFields {
    address: Option<String>,
}

#[derive(Debug)]
struct TcpSettings {
    address: String,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: TcpFields = input.fields()?;
    let address = input.required("address", fields.address)?;
    if address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
        input.report_at("address", format!("invalid address {address:?}: expected HOST:PORT"));
        return None;
    }
    Some(Arc::new(TcpSettings { address }))
}

impl KindSettings for TcpSettings {
    fn descriptors(&self) -> usize {
        // The connect's socket, closed at once.
        1
    }

    fn build(&self, _name: &str, _policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(Arc::new(TcpCheck::new(&self.address)))
    }
}

struct TcpCheck {
    address: String,
}

impl TcpCheck {
    fn new(address: &str) -> Self {
        TcpCheck { address: address.to_string() }
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
                Err(error) => Observation::fail(io_category(&error)).with_detail(error.to_string()),
            }
        })
    }
}
