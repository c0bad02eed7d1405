//! `kind = "nats"`: a NATS server, with the official async-nats client. One
//! connection is kept; each attempt is a round trip through the server (a
//! request to an inbox nobody listens on, which the server answers with "no
//! responders": a flush only empties the client's buffer), and with `stream`
//! reads the JetStream stream's info for its `messages`.
//!
//! Credentials come from the environment only: a user and password or a
//! token in the URL of `url_env` (`nats://user:pass@host`, `nats://token@host`),
//! or a token in the variable `token_env` names. async-nats would reconnect
//! on its own, but silently; a connection that is not up is dropped and made
//! again, so that the output says why it fails (`connection refused`,
//! `authentication failed`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::ErrorCode;
use async_nats::{Client, ConnectErrorKind, ConnectOptions, RequestErrorKind};
use healthd_models::ComponentType;
use reqwest::Url;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::base::policy::Policy;
use crate::base::secret::Secret;
use crate::checks::util::categories::{error_chain, find_io_error, io_category, tls_category};
use crate::checks::{
    elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation, CREDENTIALS_IN_FILE,
    RESPONSE_TIME,
};

pub const KIND: Kind = Kind::new("nats", &["url", "url_env", "token_env", "stream"], parse);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NatsFields {
    url: Option<String>,
    url_env: Option<String>,
    token_env: Option<String>,
    stream: Option<String>,
}

#[derive(Debug)]
struct NatsSettings {
    /// The server's URL without user-info.
    address: String,
    auth: Auth,
    stream: Option<String>,
}

#[derive(Debug)]
enum Auth {
    None,
    Token(Secret),
    UserPassword(Secret, Secret),
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: NatsFields = input.fields()?;
    let (url, from_file) = input.secret_url(fields.url, fields.url_env)?;
    let mut parsed = match Url::parse(url.expose()) {
        Ok(parsed) if matches!(parsed.scheme(), "nats" | "tls") && parsed.host().is_some() => {
            parsed
        }
        _ => {
            input.report_at("url", "not a nats:// or tls:// URL with a host");
            return None;
        }
    };
    // A lone user name is how NATS URLs carry a token.
    if from_file && (!parsed.username().is_empty() || parsed.password().is_some()) {
        input.report_at("url", CREDENTIALS_IN_FILE);
        return None;
    }
    let user = percent_decoded(parsed.username());
    let password = parsed.password().map(percent_decoded);
    let mut auth = match (user.is_empty(), password) {
        (true, None) => Auth::None,
        (false, None) => Auth::Token(Secret::new(user)),
        (_, Some(password)) => Auth::UserPassword(Secret::new(user), Secret::new(password)),
    };
    if let Some(var) = fields.token_env {
        match input.env.var(&var) {
            Some(token) if !token.is_empty() => {
                if !matches!(auth, Auth::None) {
                    input.report_at("token_env", "the URL holds credentials already");
                    return None;
                }
                auth = Auth::Token(Secret::new(token));
            }
            _ => {
                input.report_at(
                    "token_env",
                    format!("environment variable {var} is not set or empty"),
                );
                return None;
            }
        }
    }
    if fields.stream.as_deref() == Some("") {
        input.report_at("stream", "must not be empty");
        return None;
    }
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Some(Arc::new(NatsSettings { address: parsed.to_string(), auth, stream: fields.stream }))
}

fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

impl KindSettings for NatsSettings {
    fn descriptors(&self) -> usize {
        // The kept connection, and a new one while a dropped one closes.
        2
    }

    fn build(&self, name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        let auth = match &self.auth {
            Auth::None => Auth::None,
            Auth::Token(token) => Auth::Token(token.clone()),
            Auth::UserPassword(user, password) => {
                Auth::UserPassword(user.clone(), password.clone())
            }
        };
        Ok(Arc::new(NatsCheck {
            name: name.to_string(),
            address: self.address.clone(),
            auth,
            stream: self.stream.clone(),
            timeout: policy.timeout,
            client: Mutex::new(None),
        }))
    }
}

struct NatsCheck {
    name: String,
    address: String,
    auth: Auth,
    stream: Option<String>,
    timeout: Duration,
    /// The kept connection; held for a whole attempt.
    client: Mutex<Option<Client>>,
}

impl NatsCheck {
    fn options(&self) -> ConnectOptions {
        let options = match &self.auth {
            Auth::None => ConnectOptions::new(),
            Auth::Token(token) => ConnectOptions::with_token(token.expose().to_string()),
            Auth::UserPassword(user, password) => ConnectOptions::with_user_and_password(
                user.expose().to_string(),
                password.expose().to_string(),
            ),
        };
        options
            .name("healthd")
            .connection_timeout(self.timeout)
            // Only the server named: a cluster's other members are other checks.
            .ignore_discovered_servers()
    }

    fn failed(&self, category: String, error: &(dyn std::error::Error + 'static)) -> Observation {
        // async-nats errors name the server at most, never the credentials.
        Observation::fail(category).with_detail(error_chain(error))
    }

    async fn stream_messages(&self, client: &Client, stream: &str) -> Result<u64, Observation> {
        let context = async_nats::jetstream::new(client.clone());
        match context.get_stream(stream).await {
            Ok(stream) => Ok(stream.cached_info().state.messages),
            Err(error) => {
                let category = match error.kind() {
                    GetStreamErrorKind::JetStream(js)
                        if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                    {
                        "stream not found".to_string()
                    }
                    GetStreamErrorKind::JetStream(js) => format!("JetStream error {}", js.code()),
                    // No responders: the server runs without JetStream.
                    GetStreamErrorKind::Request
                        if error_chain(&error).contains("no responders") =>
                    {
                        "JetStream not enabled".to_string()
                    }
                    _ => "JetStream request failed".to_string(),
                };
                Err(self.failed(category, &error))
            }
        }
    }
}

impl Check for NatsCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        if self.stream.is_some() {
            &[("responseTime", "ms"), ("messages", "messages")]
        } else {
            RESPONSE_TIME
        }
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let started = Instant::now();
            let mut kept = self.client.lock().await;
            if kept.as_ref().is_some_and(|client| client.connection_state() != State::Connected) {
                tracing::info!(check = %self.name, "nats connection lost: reconnecting");
                // The last clone dropped closes the connection and its reconnect loop.
                *kept = None;
            }
            let client = match kept.as_ref() {
                Some(client) => client.clone(),
                None => match self.options().connect(self.address.as_str()).await {
                    Ok(client) => kept.insert(client).clone(),
                    Err(error) => return self.failed(connect_category(&error), &error),
                },
            };
            // The server's own answer, where a flush would only fill the socket.
            match client.request(client.new_inbox(), Default::default()).await {
                Ok(_) => {}
                Err(error) if error.kind() == RequestErrorKind::NoResponders => {}
                Err(error) if error.kind() == RequestErrorKind::TimedOut => {
                    return Observation::timed_out(self.timeout);
                }
                Err(error) => {
                    *kept = None;
                    return self.failed("connection lost".into(), &error);
                }
            }
            match &self.stream {
                None => Observation::pass(vec![elapsed_ms(started)]),
                Some(stream) => match self.stream_messages(&client, stream).await {
                    Ok(messages) => {
                        Observation::pass(vec![elapsed_ms(started), Some(messages as f64)])
                    }
                    Err(observation) => observation,
                },
            }
        })
    }
}

fn connect_category(error: &async_nats::ConnectError) -> String {
    match error.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            "authentication failed".into()
        }
        ConnectErrorKind::Dns => "DNS: no such host".into(),
        ConnectErrorKind::TimedOut => "connect timed out".into(),
        ConnectErrorKind::Tls => {
            tls_category(&error_chain(error)).unwrap_or("TLS: handshake failed").into()
        }
        _ => match find_io_error(error) {
            Some(io) => io_category(io),
            None => "connection failed".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_decoded() {
        assert_eq!(percent_decoded("p%40ss%2Fword"), "p@ss/word");
        assert_eq!(percent_decoded("plain"), "plain");
    }
}
