//! The `Check` trait and one module per kind. A check makes one attempt and
//! says what it saw; the monitor owns deadlines, retries and thresholds.

//!
//! A kind is one file: its settings (a serde struct that refuses unknown
//! keys), their validation, the pool or client it builds once, and its
//! attempt. This file lists them, as modules and in `registry!` (the
//! compiler holds the two lists to each other); `config.rs` never names a
//! kind.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use healthd_models::{ComponentType, HealthStatus};
use serde::de::DeserializeOwned;

use crate::config::{Environment, Policy, Problem, Secret};

/// Declares the kinds: those always built, and those behind a cargo feature
/// of the same purpose (heavy client crates), which an embedder may leave out.
macro_rules! registry {
    (built_in: [$($kind:ident),* $(,)?], with_feature: [$($optional:ident = $feature:literal),* $(,)?] $(,)?) => {
        static KINDS: LazyLock<Vec<Kind>> = LazyLock::new(|| {
            #[allow(unused_mut)]
            let mut kinds = vec![$($kind::KIND),*];
            $(
                #[cfg(feature = $feature)]
                kinds.push($optional::KIND);
                #[cfg(not(feature = $feature))]
                kinds.push(Kind::without_feature(stringify!($optional), $feature));
            )*
            kinds
        });
    };
}

// Declared here rather than by `registry!`: rustfmt and other tools do
// not follow modules a macro declares. A module left out of the registry
// is dead code (an error under clippy), one left out here does not build.
#[cfg(feature = "amqp")]
mod amqp;
mod disk;
#[cfg(feature = "dns")]
mod dns;
mod exec;
mod file;
#[cfg(feature = "grpc")]
mod grpc;
mod http;
#[cfg(feature = "icmp")]
mod icmp;
#[cfg(feature = "mqtt")]
mod mqtt;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "nats")]
mod nats;
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod tcp;
mod tls;

registry! {
    built_in: [disk, exec, file, http, postgres, tcp, tls],
    with_feature: [mysql = "mysql", redis = "redis", amqp = "amqp", nats = "nats", grpc = "grpc", dns = "dns", mqtt = "mqtt", icmp = "icmp"],
}

/// Every kind healthd knows, including those built without their feature.
pub fn kinds() -> &'static [Kind] {
    &KINDS
}

/// One kind of check, as the registry knows it.
pub struct Kind {
    /// The `kind = "..."` value.
    pub name: &'static str,
    /// The keys of its `[[checks]]` table beyond the common ones, so that a
    /// key of another kind is named as such.
    pub keys: &'static [&'static str],
    /// Validates the kind's part of a `[[checks]]` table; `None` when the
    /// kind was built without its cargo feature.
    parse: Option<ParseKind>,
    /// The cargo feature that builds it, for kinds behind one.
    pub feature: Option<&'static str>,
}

/// Reads and validates one check's kind-specific keys, reporting problems
/// through the input; returns the settings when there were none.
pub type ParseKind = fn(&mut KindInput<'_>) -> Option<Arc<dyn KindSettings>>;

impl Kind {
    pub const fn new(name: &'static str, keys: &'static [&'static str], parse: ParseKind) -> Self {
        Kind { name, keys, parse: Some(parse), feature: None }
    }

    #[allow(dead_code)]
    const fn without_feature(name: &'static str, feature: &'static str) -> Self {
        Kind { name, keys: &[], parse: None, feature: Some(feature) }
    }

    pub fn parse(&self, input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
        match self.parse {
            Some(parse) => parse(input),
            None => {
                let feature = self.feature.unwrap_or(self.name);
                input.report_at(
                    "kind",
                    format!("kind {:?} is not built into this healthd: build it with the cargo feature {feature:?}", self.name),
                );
                None
            }
        }
    }
}

/// A kind's validated settings: they build the check, once.
pub trait KindSettings: fmt::Debug + Send + Sync {
    /// Builds the pool or client; connections are opened by the first attempt.
    fn build(&self, name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>>;
}

/// What a kind's parser is handed: its part of one `[[checks]]` table and
/// where to report problems (keys are reported as `checks[N].KEY`).
pub struct KindInput<'a> {
    /// `checks[N]`.
    pub key: &'a str,
    pub kind: &'a str,
    /// The check's policy, for kinds that fit inner timeouts inside it.
    #[allow(dead_code)]
    pub policy: &'a Policy,
    pub env: &'a dyn Environment,
    table: Option<toml::Table>,
    problems: &'a mut Vec<Problem>,
}

impl<'a> KindInput<'a> {
    pub fn new(
        key: &'a str,
        kind: &'a str,
        policy: &'a Policy,
        table: toml::Table,
        env: &'a dyn Environment,
        problems: &'a mut Vec<Problem>,
    ) -> Self {
        KindInput { key, kind, policy, env, table: Some(table), problems }
    }

    /// Reports a problem with the key `name` of this check.
    pub fn report_at(&mut self, name: &str, reason: impl Into<String>) {
        self.problems.push(Problem { key: format!("{}.{name}", self.key), reason: reason.into() });
    }

    /// Reports a problem with this check as a whole.
    pub fn report(&mut self, reason: impl Into<String>) {
        self.problems.push(Problem { key: self.key.to_string(), reason: reason.into() });
    }

    /// Deserialises the kind's keys into its settings struct, which should
    /// `deny_unknown_fields`; a problem names the key it is about.
    pub fn fields<T: DeserializeOwned>(&mut self) -> Option<T> {
        let table = self.table.take().unwrap_or_default();
        match serde_path_to_error::deserialize(toml::Value::Table(table)) {
            Ok(fields) => Some(fields),
            Err(error) => {
                let path = error.path().to_string();
                let reason = crate::config::serde_reason(error.into_inner());
                if path == "." {
                    self.report(reason);
                } else {
                    self.report_at(&path, reason);
                }
                None
            }
        }
    }

    /// A value the kind cannot do without.
    pub fn required<T>(&mut self, name: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.report_at(name, format!("is required for kind {:?}", self.kind));
        }
        value
    }

    /// `url` (without credentials) or `url_env` (the name of a variable
    /// holding it). Returns the URL and whether it came from the file, where
    /// credentials are refused.
    pub fn secret_url(
        &mut self,
        url: Option<String>,
        url_env: Option<String>,
    ) -> Option<(Secret, bool)> {
        match (url, url_env) {
            (Some(url), None) => Some((Secret::new(url), true)),
            (None, Some(var)) => match self.env.var(&var) {
                Some(value) if !value.is_empty() => Some((Secret::new(value), false)),
                _ => {
                    self.report_at(
                        "url_env",
                        format!("environment variable {var} is not set or empty"),
                    );
                    None
                }
            },
            (Some(_), Some(_)) => {
                self.report_at("url", "set url or url_env, not both");
                None
            }
            (None, None) => {
                self.report_at(
                    "url",
                    format!("url or url_env is required for kind {:?}", self.kind),
                );
                None
            }
        }
    }
}

/// Said of a URL in the file that holds a password or user-info.
pub const CREDENTIALS_IN_FILE: &str =
    "holds credentials: put the whole URL in an environment variable and name it with url_env";

/// A boxed future, so that `Check` stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One dependency to watch: every kind of check implements it, and so can
/// an app's own checks ([`Builder::check`](crate::Builder::check)).
///
/// The monitor calls `attempt` once per attempt, under the check's
/// deadline, and owns everything around it: retries, backoff, thresholds,
/// history, metrics. Implementations never block a thread (use
/// [`blocking_check_fn`](crate::blocking_check_fn) for code that does): the
/// monitor drops the future at the deadline, and that must cancel the
/// work. A panic fails the attempt with output `check panicked`.
///
/// ```
/// use healthd::{BoxFuture, Check, ComponentType, Observation};
///
/// struct CacheWarm(std::sync::atomic::AtomicBool);
///
/// impl Check for CacheWarm {
///     fn component_type(&self) -> ComponentType {
///         ComponentType::Component
///     }
///     fn measurements(&self) -> &'static [(&'static str, &'static str)] {
///         &[("warm", "boolean")]
///     }
///     fn attempt(&self) -> BoxFuture<'_, Observation> {
///         Box::pin(async move {
///             if self.0.load(std::sync::atomic::Ordering::Relaxed) {
///                 Observation::pass(vec![Some(1.0)])
///             } else {
///                 Observation::warn("cache still warming", vec![Some(0.0)])
///             }
///         })
///     }
/// }
/// # let _ = CacheWarm(Default::default());
/// ```
pub trait Check: Send + Sync + 'static {
    /// `componentType` in reports.
    fn component_type(&self) -> ComponentType;
    /// The measurements `attempt` reports, as (name, unit), at least one:
    /// the main one first. Reports key each as `CHECK:NAME`
    /// (`db:responseTime`), and `/metrics` reads the first.
    fn measurements(&self) -> &'static [(&'static str, &'static str)];
    /// Makes one attempt.
    fn attempt(&self) -> BoxFuture<'_, Observation>;
}

/// What one attempt saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// What the attempt itself saw, before thresholds.
    pub status: HealthStatus,
    /// A category a person can act on (`connection refused`); never raw
    /// error text, which goes to the log. Shown to every caller allowed to
    /// see details.
    pub output: Option<String>,
    /// Values of `Check::measurements`, in order; `None` where one could
    /// not be taken.
    pub values: Vec<Option<f64>>,
    /// Whether the attempt was cut at its deadline (counted in `/metrics`).
    pub timed_out: bool,
}

impl Observation {
    /// A passing attempt with its values.
    pub fn pass(values: Vec<Option<f64>>) -> Self {
        Observation { status: HealthStatus::Pass, output: None, values, timed_out: false }
    }

    /// A warning: working, but someone should look.
    pub fn warn(output: impl Into<String>, values: Vec<Option<f64>>) -> Self {
        Observation {
            status: HealthStatus::Warn,
            output: Some(output.into()),
            values,
            timed_out: false,
        }
    }

    /// A failure that measured nothing.
    pub fn fail(output: impl Into<String>) -> Self {
        Observation::fail_with(output, Vec::new())
    }

    /// A failure that still measured something (an answer's time, free space).
    pub fn fail_with(output: impl Into<String>, values: Vec<Option<f64>>) -> Self {
        Observation {
            status: HealthStatus::Fail,
            output: Some(output.into()),
            values,
            timed_out: false,
        }
    }

    /// An attempt cut at its deadline: `timed out after N ms`.
    pub fn timed_out(after: Duration) -> Self {
        Observation { timed_out: true, ..Observation::fail(timed_out_output(after)) }
    }
}

pub fn timed_out_output(after: Duration) -> String {
    format!("timed out after {} ms", after.as_millis())
}

/// Milliseconds since `started`, for `responseTime`.
pub fn elapsed_ms(started: Instant) -> Option<f64> {
    Some((started.elapsed().as_secs_f64() * 1_000.0 * 1_000.0).round() / 1_000.0)
}

/// The keys of the SQL kinds (`postgres`, `mysql`).
pub const SQL_KEYS: &[&str] = &["url", "url_env", "query", "pool_size", "ca_file"];

/// The SQL kinds' `[[checks]]` keys: a database URL (or the variable that
/// holds it), the statement a run executes, the pool, a private CA.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlFields {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub query: Option<String>,
    pub pool_size: Option<usize>,
    pub ca_file: Option<std::path::PathBuf>,
}

impl SqlFields {
    /// The pool's size (2 unless set; 0 is reported) and the statement a
    /// run executes (`SELECT 1` unless set).
    pub fn pool_and_query(&self, input: &mut KindInput<'_>) -> Option<(usize, String)> {
        let pool_size = self.pool_size.unwrap_or(2);
        if pool_size == 0 {
            input.report_at("pool_size", "must be at least 1");
            return None;
        }
        Some((pool_size, self.query.clone().unwrap_or_else(|| "SELECT 1".into())))
    }
}

/// The measurements of the kinds that observe only a response time.
pub const RESPONSE_TIME: &[(&str, &str)] = &[("responseTime", "ms")];

/// Holds the connection an attempt uses until its round trip finished.
/// [`finish`](Self::finish) hands it back for the next attempt (to the
/// pool, or to the check that keeps it). Dropped before that (the deadline
/// passed, or the round trip failed), it goes to `abandon` instead, which
/// closes or forgets it: no later attempt inherits a connection that may
/// still owe a reply.
pub struct AbandonUnlessFinished<T, F: FnOnce(T)> {
    held: Option<(T, F)>,
}

impl<T, F: FnOnce(T)> AbandonUnlessFinished<T, F> {
    /// Holds `connection`; `abandon` gets it if the guard is dropped first.
    pub fn new(connection: T, abandon: F) -> Self {
        AbandonUnlessFinished { held: Some((connection, abandon)) }
    }

    /// The connection, for the round trip.
    pub fn connection(&mut self) -> &mut T {
        &mut self.held.as_mut().expect("present until finished or dropped").0
    }

    /// The round trip finished: the connection, to be given back.
    pub fn finish(mut self) -> T {
        self.held.take().expect("present until finished or dropped").0
    }
}

impl<T, F: FnOnce(T)> Drop for AbandonUnlessFinished<T, F> {
    fn drop(&mut self) {
        if let Some((connection, abandon)) = self.held.take() {
            abandon(connection);
        }
    }
}

/// The category of a failed socket operation.
pub fn io_category(error: &io::Error) -> String {
    use io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset | ConnectionAborted | BrokenPipe => "connection reset".into(),
        UnexpectedEof => "connection closed".into(),
        TimedOut => "connect timed out".into(),
        AddrNotAvailable | HostUnreachable | NetworkUnreachable => "host unreachable".into(),
        PermissionDenied => "permission denied".into(),
        NotFound => "not found".into(),
        _ if is_dns_failure(error) => "DNS: no such host".into(),
        _ => "network error".into(),
    }
}

fn is_dns_failure(error: &io::Error) -> bool {
    let text = error.to_string();
    text.contains("failed to lookup address") || text.contains("Name or service not known")
}

/// The first `io::Error` in an error's source chain.
pub fn find_io_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = error.source();
    }
    None
}

/// An error's whole source chain on one line, for the log.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(source) = current {
        text.push_str(": ");
        text.push_str(&source.to_string());
        current = source.source();
    }
    text
}

/// rustls names certificate problems in its error text; map them to words.
/// Current rustls 0.23 writes the common ones as sentences ("certificate expired:
/// verification time ..."), the others as variant names; match both.
pub fn tls_category(chain: &str) -> Option<&'static str> {
    let categories = [
        ("certificate expired", "TLS: certificate expired"),
        ("Expired", "TLS: certificate expired"),
        ("certificate not valid yet", "TLS: certificate not yet valid"),
        ("NotValidYet", "TLS: certificate not yet valid"),
        ("UnknownIssuer", "TLS: certificate not trusted"),
        ("certificate not valid for name", "TLS: hostname mismatch"),
        ("NotValidForName", "TLS: hostname mismatch"),
        ("Revoked", "TLS: certificate revoked"),
        ("invalid peer certificate", "TLS: invalid certificate"),
        ("InvalidContentType", "TLS: the server does not speak TLS"),
        ("CorruptMessage", "TLS: the server does not speak TLS"),
    ];
    categories.iter().find(|(needle, _)| chain.contains(needle)).map(|(_, category)| *category)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_a_kind_declares_is_one_its_settings_accept() {
        let policy = crate::config::TEST_POLICY;
        let env = std::collections::BTreeMap::<String, String>::new();
        for kind in kinds().iter().filter(|kind| kind.parse.is_some()) {
            for key in kind.keys {
                // A value of the wrong type for most keys: the settings may refuse
                // it, but never as a key they do not know.
                let table = toml::Table::from_iter([(key.to_string(), toml::Value::Array(vec![]))]);
                let mut problems = Vec::new();
                let mut input =
                    KindInput::new("checks[0]", kind.name, &policy, table, &env, &mut problems);
                let _ = kind.parse(&mut input);
                assert!(
                    problems.iter().all(|problem| !problem.reason.contains("unknown field")),
                    "kind {} declares {key} but refuses it: {problems:?}",
                    kind.name
                );
            }
        }
    }

    #[test]
    fn socket_errors_become_categories() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(io_category(&refused), "connection refused");
        // What getaddrinfo failures look like through tokio.
        for text in [
            "failed to lookup address information: Name or service not known",
            "failed to lookup address information: Temporary failure in name resolution",
        ] {
            assert_eq!(io_category(&io::Error::other(text)), "DNS: no such host", "{text}");
        }
        assert_eq!(io_category(&io::Error::other("something else")), "network error");
    }

    #[test]
    fn the_timeout_output_names_the_deadline() {
        let observation = Observation::timed_out(Duration::from_millis(2000));
        assert_eq!(observation.output.as_deref(), Some("timed out after 2000 ms"));
        assert!(observation.timed_out);
    }

    #[test]
    fn tls_errors_become_categories() {
        assert_eq!(
            tls_category("invalid peer certificate: Expired"),
            Some("TLS: certificate expired")
        );
        // The text rustls 0.23 writes for the common certificate problems.
        let expired = "error sending request: client error (Connect): invalid peer certificate: certificate expired: verification time 1700000000 (UNIX), but certificate is not valid after 1600000000 (100000000 seconds ago)";
        assert_eq!(tls_category(expired), Some("TLS: certificate expired"));
        let early = "invalid peer certificate: certificate not valid yet: verification time 1 (UNIX), but certificate is not valid before 2 (1 seconds in future)";
        assert_eq!(tls_category(early), Some("TLS: certificate not yet valid"));
        let name = "invalid peer certificate: certificate not valid for name \"a.example\"; certificate is only valid for b.example";
        assert_eq!(tls_category(name), Some("TLS: hostname mismatch"));
        assert_eq!(
            tls_category("invalid peer certificate: UnknownIssuer"),
            Some("TLS: certificate not trusted")
        );
        assert_eq!(
            tls_category("received corrupt message of type InvalidContentType"),
            Some("TLS: the server does not speak TLS")
        );
        assert_eq!(tls_category("connection refused"), None);
    }
}
