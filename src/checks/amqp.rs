//! `kind = "amqp"`: RabbitMQ and other AMQP 0-9-1 brokers, with lapin. One
//! connection is kept and re-established after a failure; each attempt
//! opens and closes a channel, and with `queue` declares it passively to
//! read its `messages` and `consumers`.
//!
//! lapin drives each connection from a thread of its own, and a broker that
//! accepts a socket and never answers keeps that thread waiting. So the
//! connect runs as a task of its own that a later attempt picks up again,
//! never a new one per attempt: at most one such wait exists at a time.

use std::sync::Arc;
use std::time::Instant;

use healthd_models::ComponentType;
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use reqwest::Url;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::base::policy::Policy;
use crate::base::secret::Secret;
use crate::checks::util::categories::{error_chain, io_category, tls_category};
use crate::checks::{
    elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation, CREDENTIALS_IN_FILE,
    RESPONSE_TIME,
};

pub const KIND: Kind =
    Kind::new("amqp", &["url", "url_env", "queue", "warn_above_messages"], parse);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmqpFields {
    url: Option<String>,
    url_env: Option<String>,
    queue: Option<String>,
    warn_above_messages: Option<u64>,
}

#[derive(Debug)]
struct AmqpSettings {
    url: Secret,
    queue: Option<String>,
    warn_above_messages: Option<u64>,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: AmqpFields = input.fields()?;
    let (url, from_file) = input.secret_url(fields.url, fields.url_env)?;
    match Url::parse(url.expose()) {
        Ok(parsed) if from_file && parsed.password().is_some() => {
            input.report_at("url", CREDENTIALS_IN_FILE);
            return None;
        }
        Ok(parsed) if matches!(parsed.scheme(), "amqp" | "amqps") => {}
        _ => {
            input.report_at("url", "not an amqp:// or amqps:// URL");
            return None;
        }
    }
    // lapin's own parser says what else is wrong (a bad port, a query key); its
    // message never repeats the URL.
    if let Err(error) = url.expose().parse::<lapin::uri::AMQPUri>() {
        input.report_at("url", format!("not an AMQP URL: {error}"));
        return None;
    }
    if fields.queue.as_deref() == Some("") {
        input.report_at("queue", "must not be empty");
        return None;
    }
    if fields.warn_above_messages.is_some() && fields.queue.is_none() {
        input.report_at("warn_above_messages", "needs a queue to count the messages of");
        return None;
    }
    Some(Arc::new(AmqpSettings {
        url,
        queue: fields.queue,
        warn_above_messages: fields.warn_above_messages,
    }))
}

impl KindSettings for AmqpSettings {
    fn descriptors(&self) -> usize {
        // The kept connection and one being re-established, and lapin's own
        // reactor for it (its poller and waker).
        4
    }

    fn build(&self, name: &str, _policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(Arc::new(AmqpCheck {
            name: name.to_string(),
            url: self.url.clone(),
            queue: self.queue.clone(),
            warn_above_messages: self.warn_above_messages,
            link: Mutex::new(Link::Idle),
        }))
    }
}

struct AmqpCheck {
    name: String,
    url: Secret,
    queue: Option<String>,
    warn_above_messages: Option<u64>,
    /// Held for a whole attempt: attempts of one check never overlap, and a
    /// dropped attempt releases it.
    link: Mutex<Link>,
}

/// The kept connection.
enum Link {
    Idle,
    /// A connect in progress, carried over to the next attempt if this one
    /// runs out of time.
    Connecting(JoinHandle<lapin::Result<Connection>>),
    Connected(Box<Connection>),
}

impl AmqpCheck {
    fn failed(&self, error: &lapin::Error) -> Observation {
        // lapin's errors never hold the URL or its credentials.
        Observation::fail(amqp_category(error)).with_detail(error_chain(error))
    }

    fn connect_failed(&self, error: &lapin::Error) -> Observation {
        // Refused while connecting is the login; later it is a permission.
        let observation = match error.kind() {
            ErrorKind::ProtocolError(amqp)
                if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)) =>
            {
                Observation::fail("authentication failed")
            }
            _ => Observation::fail(amqp_category(error)),
        };
        observation.with_detail(error_chain(error))
    }

    /// The kept connection, connecting first when there is none or it broke.
    async fn connection<'a>(&self, link: &'a mut Link) -> Result<&'a Connection, Observation> {
        if let Link::Connected(connection) = link {
            if !connection.status().connected() {
                tracing::info!(check = %self.name, "amqp connection lost: reconnecting");
                *link = Link::Idle;
            }
        }
        if let Link::Idle = link {
            let url = self.url.expose().to_string();
            *link = Link::Connecting(tokio::spawn(async move {
                let properties =
                    ConnectionProperties::default().with_connection_name("healthd".into());
                Connection::connect(&url, properties).await
            }));
        }
        if let Link::Connecting(connecting) = link {
            let connected = connecting.await;
            *link = Link::Idle;
            match connected {
                Ok(Ok(connection)) => *link = Link::Connected(Box::new(connection)),
                Ok(Err(error)) => return Err(self.connect_failed(&error)),
                Err(_) => return Err(Observation::fail("amqp connect panicked")),
            }
        }
        match link {
            Link::Connected(connection) => Ok(connection),
            _ => unreachable!("connected above"),
        }
    }

    fn judge(&self, elapsed: Option<f64>, messages: u64, consumers: u32) -> Observation {
        let values = vec![elapsed, Some(messages as f64), Some(f64::from(consumers))];
        match self.warn_above_messages {
            Some(limit) if messages > limit => {
                Observation::warn(format!("messages above {limit}"), values)
            }
            _ => Observation::pass(values),
        }
    }
}

impl Check for AmqpCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        if self.queue.is_some() {
            &[("responseTime", "ms"), ("messages", "messages"), ("consumers", "consumers")]
        } else {
            RESPONSE_TIME
        }
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let started = Instant::now();
            let mut link = self.link.lock().await;
            let connection = match self.connection(&mut link).await {
                Ok(connection) => connection,
                Err(observation) => return observation,
            };
            let channel = match connection.create_channel().await {
                Ok(channel) => channel,
                Err(error) => {
                    // The connection may be the problem: start afresh next time.
                    *link = Link::Idle;
                    return self.failed(&error);
                }
            };
            let observation = match &self.queue {
                None => Observation::pass(vec![elapsed_ms(started)]),
                Some(queue) => {
                    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                    match channel
                        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                        .await
                    {
                        Ok(declared) => self.judge(
                            elapsed_ms(started),
                            u64::from(declared.message_count()),
                            declared.consumer_count(),
                        ),
                        Err(error) => self.failed(&error),
                    }
                }
            };
            // A missing queue has closed the channel already.
            if channel.status().connected() {
                if let Err(error) = channel.close(200, "OK".into()).await {
                    tracing::warn!(check = %self.name, error = %error_chain(&error), "amqp channel close failed");
                }
            }
            observation
        })
    }
}

fn amqp_category(error: &lapin::Error) -> String {
    match error.kind() {
        ErrorKind::IOError(io) => {
            let chain = error_chain(io.as_ref());
            match tls_category(&chain) {
                Some(tls) => tls.into(),
                None => io_category(io),
            }
        }
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => "queue not found".into(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => "access refused".into(),
            AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => {
                "queue is exclusive to another connection".into()
            }
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => "virtual host not allowed".into(),
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => {
                "connection closed by the broker".into()
            }
            AMQPErrorKind::Hard(AMQPHardError::RESOURCEERROR) => "broker out of resources".into(),
            _ => format!("AMQP error {}", amqp.get_id()),
        },
        ErrorKind::InvalidProtocolVersion(_) | ErrorKind::ParsingError(_) => {
            "not an AMQP 0-9-1 broker".into()
        }
        ErrorKind::MissingHeartbeatError => "broker stopped answering".into(),
        ErrorKind::InvalidConnectionState(_) | ErrorKind::InvalidChannelState(..) => {
            "connection closed".into()
        }
        _ => "connection failed".into(),
    }
}
