//! `kind = "mqtt"`: an MQTT 3.1.1 session with a broker, with rumqttc: the
//! connect (credentials from the environment, TLS with rustls), and with
//! `topic` a round trip: subscribe to a topic of the run's own under it,
//! publish a message there (QoS 1) and wait for it to come back. Once
//! connected, a round trip that stalls is cut at 90% of the deadline and
//! reported by the step the broker did not take.
//!
//! What is built once: the broker's address, the credentials and the TLS
//! client config (roots read once). Each run is a session of its own, with
//! a client id of its own and a clean session, ended with DISCONNECT: an
//! MQTT connection must be polled all the time to stay up (keep-alive), and
//! a session kept between runs would need a task of its own to do that and
//! would still report on a connection the run did not make.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use healthd_models::ComponentType;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde::Deserialize;

use crate::base::policy::Policy;
use crate::base::secret::Secret;
use crate::checks::util::categories::{error_chain, find_io_error, io_category, tls_category};
use crate::checks::util::trust::Verify;
use crate::checks::{
    elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation, RESPONSE_TIME,
};

pub const KIND: Kind =
    Kind::new("mqtt", &["url", "username_env", "password_env", "ca_file", "topic"], parse);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttFields {
    url: Option<String>,
    username_env: Option<String>,
    password_env: Option<String>,
    ca_file: Option<PathBuf>,
    topic: Option<String>,
}

#[derive(Debug)]
struct MqttSettings {
    host: String,
    port: u16,
    tls: bool,
    credentials: Option<(Secret, Secret)>,
    ca_file: Option<PathBuf>,
    topic: Option<String>,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: MqttFields = input.fields()?;
    let url = input.required("url", fields.url)?;
    let (host, port, tls) = parse_url(input, &url)?;
    let credentials = match (fields.username_env, fields.password_env) {
        (None, None) => None,
        (None, Some(_)) => {
            input.report_at("password_env", "needs username_env (MQTT sends no password alone)");
            return None;
        }
        (Some(user_var), password_var) => {
            let user = variable(input, "username_env", &user_var)?;
            let password = match password_var {
                Some(var) => variable(input, "password_env", &var)?,
                None => String::new(),
            };
            Some((Secret::new(user), Secret::new(password)))
        }
    };
    if let Some(path) = &fields.ca_file {
        if !tls {
            input.report_at("ca_file", "needs an mqtts:// url");
            return None;
        }
        if let Err(reason) = crate::checks::util::trust::check_ca_file(path) {
            input.report_at("ca_file", reason);
            return None;
        }
    }
    if let Some(topic) = &fields.topic {
        if topic.is_empty() || topic.contains(['+', '#', '\0']) || topic.starts_with('$') {
            input.report_at(
                "topic",
                format!("{topic:?} is not a topic to publish to: no wildcards (+, #), not empty, not $-prefixed"),
            );
            return None;
        }
    }
    Some(Arc::new(MqttSettings {
        host,
        port,
        tls,
        credentials,
        ca_file: fields.ca_file,
        topic: fields.topic.map(|topic| topic.trim_end_matches('/').to_string()),
    }))
}

/// `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (8883): host, port, TLS.
fn parse_url(input: &mut KindInput<'_>, url: &str) -> Option<(String, u16, bool)> {
    let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (rest, false, 1883)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (rest, true, 8883)
    } else {
        input.report_at("url", "not an mqtt:// or mqtts:// URL");
        return None;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        input.report_at(
            "url",
            "holds credentials: name the variables that hold them with username_env and password_env",
        );
        return None;
    }
    let invalid = |input: &mut KindInput<'_>| {
        input.report_at("url", "expected mqtt://HOST:PORT or mqtts://HOST:PORT, with no path");
        None
    };
    if authority.is_empty() || authority.contains('/') {
        return invalid(input);
    }
    // [v6]:port, [v6], host:port, host
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, "")) => (host.to_string(), None),
            Some((host, port)) => match port.strip_prefix(':') {
                Some(port) => (host.to_string(), Some(port)),
                None => return invalid(input),
            },
            None => return invalid(input),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return invalid(input),
        },
    };
    if host.is_empty() {
        return invalid(input);
    }
    Some((host, port, tls))
}

fn variable(input: &mut KindInput<'_>, key: &str, name: &str) -> Option<String> {
    match input.env.var(name) {
        Some(value) if !value.is_empty() => Some(value),
        _ => {
            input.report_at(key, format!("environment variable {name} is not set or empty"));
            None
        }
    }
}

impl KindSettings for MqttSettings {
    fn descriptors(&self) -> usize {
        // A session of its own per run, and the last one's while it closes.
        2
    }

    fn build(&self, name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        let tls = if self.tls {
            let roots = crate::checks::util::trust::roots(self.ca_file.as_deref())?;
            Some(Arc::new(crate::checks::util::trust::client_config(Verify::Full, roots)?))
        } else {
            None
        };
        Ok(Arc::new(MqttCheck {
            name: name.to_string(),
            host: self.host.clone(),
            port: self.port,
            tls,
            credentials: self.credentials.as_ref().map(|(user, password)| {
                (Secret::new(user.expose().to_string()), Secret::new(password.expose().to_string()))
            }),
            topic: self.topic.clone(),
            runs: AtomicU64::new(0),
            budget: policy.timeout.mul_f64(0.9),
        }))
    }
}

struct MqttCheck {
    name: String,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    credentials: Option<(Secret, Secret)>,
    topic: Option<String>,
    /// Counts runs, for client ids no two runs share.
    runs: AtomicU64,
    /// How long a run may take before it reports the step it is stuck at.
    budget: Duration,
}

/// Where a run is.
#[derive(Clone, Copy)]
enum Stage {
    Connecting,
    /// Connected; the SUBSCRIBE is out.
    Subscribing,
    /// Subscribed; the message is out.
    Delivering,
}

/// How a run ended early.
enum Failure {
    Connection(ConnectionError),
    SubscribeRefused,
    /// Connected, and then the broker did not take the next step in time.
    Stalled(Stage),
}

impl MqttCheck {
    /// `healthd-NAME-PID-N`: unique among this process's runs, and distinct
    /// from another healthd's, so that no run takes over another's session.
    fn client_id(&self) -> String {
        let name: String =
            self.name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(32).collect();
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        format!("healthd-{name}-{}-{run}", std::process::id())
    }

    fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, &self.host, self.port);
        options.set_keep_alive(Duration::from_secs(30)).set_clean_session(true);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.expose(), password.expose());
        }
        if let Some(config) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                config.clone(),
            )));
        }
        options
    }

    /// Connects, and with `topic` makes the round trip.
    async fn session(
        &self,
        client: &AsyncClient,
        events: &mut rumqttc::EventLoop,
        client_id: &str,
        started: Instant,
    ) -> Result<(), Failure> {
        let mut probe = None;
        let mut stage = Stage::Connecting;
        // Once connected, the round trip ends before the monitor's deadline,
        // so that the output can say which step the broker did not take.
        let deadline = tokio::time::Instant::from_std(started + self.budget);
        loop {
            let event = match stage {
                Stage::Connecting => events.poll().await,
                _ => match tokio::time::timeout_at(deadline, events.poll()).await {
                    Ok(event) => event,
                    Err(_) => return Err(Failure::Stalled(stage)),
                },
            }
            .map_err(Failure::Connection)?;
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    let Some(topic) = &self.topic else { return Ok(()) };
                    let topic = format!("{topic}/{client_id}");
                    // Queued for the event loop; it has room.
                    let _ = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce);
                    probe = Some(topic);
                    stage = Stage::Subscribing;
                }
                Event::Incoming(Packet::SubAck(ack)) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        return Err(Failure::SubscribeRefused);
                    }
                    if let Some(topic) = &probe {
                        let _ = client.try_publish(
                            topic.as_str(),
                            QoS::AtLeastOnce,
                            false,
                            client_id.as_bytes().to_vec(),
                        );
                        stage = Stage::Delivering;
                    }
                }
                Event::Incoming(Packet::Publish(message))
                    if probe.as_deref() == Some(message.topic.as_str())
                        && message.payload.as_ref() == client_id.as_bytes() =>
                {
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    fn failed(&self, failure: Failure) -> Observation {
        let error = match failure {
            Failure::SubscribeRefused => return Observation::fail("subscription refused"),
            Failure::Stalled(stage) => {
                let within = self.budget.as_millis();
                return Observation::fail(match stage {
                    Stage::Delivering => {
                        format!("message not delivered back within {within} ms")
                    }
                    _ => format!("subscription not acknowledged within {within} ms"),
                });
            }
            Failure::Connection(error) => error,
        };
        let detail = error_chain(&error);
        let output = match &error {
            ConnectionError::ConnectionRefused(code) => match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    "authentication failed".to_string()
                }
                ConnectReturnCode::ServiceUnavailable => "broker unavailable".to_string(),
                ConnectReturnCode::BadClientId => "client id refused".to_string(),
                ConnectReturnCode::RefusedProtocolVersion => "protocol version refused".to_string(),
                ConnectReturnCode::Success => "connection refused by the broker".to_string(),
            },
            ConnectionError::Tls(_) => tls_category(&format!("{error:?} {}", error_chain(&error)))
                .unwrap_or("TLS: handshake failed")
                .to_string(),
            ConnectionError::NetworkTimeout => "connect timed out".to_string(),
            ConnectionError::NotConnAck(_) => "not an MQTT broker".to_string(),
            ConnectionError::Io(io) => match tls_category(&error_chain(&error)) {
                Some(category) if self.tls.is_some() => category.to_string(),
                _ => io_category(io),
            },
            ConnectionError::MqttState(_) => match find_io_error(&error) {
                Some(io) => io_category(io),
                None => "MQTT protocol error".to_string(),
            },
            _ => "MQTT error".to_string(),
        };
        Observation::fail(output).with_detail(detail)
    }
}

impl Check for MqttCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let client_id = self.client_id();
            let (client, mut events) = AsyncClient::new(self.options(&client_id), 8);
            let started = Instant::now();
            let result = self.session(&client, &mut events, &client_id, started).await;
            let response_time = elapsed_ms(started);
            if let Err(failure) = result {
                return self.failed(failure);
            }
            // A polite goodbye, so the broker logs no lost connection; not
            // worth waiting for.
            if client.try_disconnect().is_ok() {
                let _ = tokio::time::timeout(Duration::from_millis(50), async {
                    while let Ok(event) = events.poll().await {
                        if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                            break;
                        }
                    }
                })
                .await;
            }
            Observation::pass(vec![response_time])
        })
    }
}
