//! `kind = "tcp"`: a TCP connect to `address`; optionally `send` bytes and
//! `expect` a reply matching a regular expression (a banner such as
//! `SSH-2.0-` or `220 `, or the answer to what was sent), as blackbox
//! exporter's `query_response` does. The reply is read up to `MAX_REPLY`
//! bytes, within the deadline, and matched as bytes.

use std::sync::Arc;
use std::time::Instant;

use healthd_models::ComponentType;
use regex::bytes::Regex;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::base::policy::Policy;
use crate::checks::util::categories::io_category;
use crate::checks::util::pattern::bytes_pattern;
use crate::checks::{
    elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation, RESPONSE_TIME,
};

pub const KIND: Kind = Kind::new("tcp", &["address", "send", "expect"], parse);

/// The most of a reply that is read while waiting for `expect` to match:
/// banners and short answers fit many times over.
const MAX_REPLY: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpFields {
    address: Option<String>,
    send: Option<String>,
    expect: Option<String>,
}

#[derive(Debug)]
struct TcpSettings {
    address: String,
    /// Written once connected: the string's UTF-8 bytes, so TOML's escapes
    /// (`\r\n`, `\u0000`) write control bytes.
    send: Vec<u8>,
    expect: Option<Regex>,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: TcpFields = input.fields()?;
    let address = input.required("address", fields.address)?;
    if address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
        input.report_at("address", format!("invalid address {address:?}: expected HOST:PORT"));
        return None;
    }
    let expect = match fields.expect.as_deref().map(bytes_pattern) {
        None => None,
        Some(Ok(pattern)) => Some(pattern),
        Some(Err(reason)) => {
            input.report_at("expect", reason);
            return None;
        }
    };
    let send = fields.send.map(String::into_bytes).unwrap_or_default();
    Some(Arc::new(TcpSettings { address, send, expect }))
}

impl KindSettings for TcpSettings {
    fn descriptors(&self) -> usize {
        // The connection's socket, closed at the end of the attempt.
        1
    }

    fn build(&self, _name: &str, _policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(Arc::new(TcpCheck {
            address: self.address.clone(),
            send: self.send.clone(),
            expect: self.expect.clone(),
        }))
    }
}

struct TcpCheck {
    address: String,
    send: Vec<u8>,
    expect: Option<Regex>,
}

impl TcpCheck {
    /// Reads until the reply matches `expect`, the peer closes, or
    /// `MAX_REPLY` bytes came without a match.
    async fn read_reply(stream: &mut TcpStream, expect: &Regex) -> Result<(), Observation> {
        let mut reply = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            let read = match stream.read(&mut chunk).await {
                Ok(read) => read,
                Err(error) => return Err(failed(&error)),
            };
            if read == 0 {
                let output = if reply.is_empty() {
                    "connection closed"
                } else {
                    "the reply does not match expect"
                };
                return Err(Observation::fail(output));
            }
            let room = MAX_REPLY - reply.len();
            reply.extend_from_slice(&chunk[..read.min(room)]);
            if expect.is_match(&reply) {
                return Ok(());
            }
            if reply.len() == MAX_REPLY {
                return Err(Observation::fail(format!(
                    "the reply does not match expect within {MAX_REPLY} bytes"
                )));
            }
        }
    }
}

fn failed(error: &std::io::Error) -> Observation {
    Observation::fail(io_category(error)).with_detail(error.to_string())
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
            let mut stream = match TcpStream::connect(&self.address).await {
                Ok(stream) => stream,
                Err(error) => return failed(&error),
            };
            if !self.send.is_empty() {
                if let Err(error) = stream.write_all(&self.send).await {
                    return failed(&error);
                }
            }
            if let Some(expect) = &self.expect {
                if let Err(failure) = Self::read_reply(&mut stream, expect).await {
                    // The dependency answered: how fast is still worth showing.
                    return Observation { values: vec![elapsed_ms(started)], ..failure };
                }
            }
            Observation::pass(vec![elapsed_ms(started)])
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn send_writes_the_bytes_toml_escapes_make() {
        let table: toml::Table = toml::from_str(r#"send = "QUIT\r\n""#).unwrap();
        let send = table["send"].as_str().unwrap().as_bytes();
        assert_eq!(send, b"QUIT\r\n");
    }
}
