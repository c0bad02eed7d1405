//! The `Check` trait and one module per kind. A check makes one attempt and
//! says what it saw; the engine owns deadlines, retries and thresholds.
//!
//! A kind is one file: its settings (a serde struct that refuses unknown
//! keys), their validation, the pool or client it builds once, and its
//! attempt. This file lists them, as modules and in `registry!` (the
//! compiler holds the two lists to each other); the config never names a
//! kind. Checks from code (`from_code`) are checks like the kinds', built
//! by the app instead of from a table; `util/` holds what kinds share.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use healthd_models::{ComponentType, HealthStatus};
use serde::de::DeserializeOwned;

use crate::base::policy::Policy;
use crate::base::problem::{serde_reason, ConfigProblem};
use crate::base::secret::{Environment, Secret};

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

pub mod from_code;
#[cfg(test)]
pub mod test_support;
pub mod util;

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
mod heartbeat;
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
    built_in: [disk, exec, file, heartbeat, http, postgres, tcp, tls],
    with_feature: [mysql = "mysql", redis = "redis", amqp = "amqp", nats = "nats", grpc = "grpc", dns = "dns", mqtt = "mqtt", icmp = "icmp"],
}

pub use heartbeat::{kept_body, Heartbeat, Signal, MAX_PING_BODY, PINGS_PER_SECOND, PING_BURST};
// What the store saves of a heartbeat and gives back (`Heartbeat::state`,
// `Heartbeat::restore`); unused until the store is wired to them.
#[allow(unused_imports)]
pub use heartbeat::{Outcome, PingState};

/// The heartbeat a running check is, when it is one: what pings feed.
pub fn heartbeat_of(check: &dyn Check) -> Option<&Heartbeat> {
    heartbeat::of(check)
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

    /// How many descriptors the check may hold at once (its pool, sockets,
    /// pipes), for the reserve client connections may not take
    /// (`base::budget`).
    fn descriptors(&self) -> usize;
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
    problems: &'a mut Vec<ConfigProblem>,
}

impl<'a> KindInput<'a> {
    pub fn new(
        key: &'a str,
        kind: &'a str,
        policy: &'a Policy,
        table: toml::Table,
        env: &'a dyn Environment,
        problems: &'a mut Vec<ConfigProblem>,
    ) -> Self {
        KindInput { key, kind, policy, env, table: Some(table), problems }
    }

    /// Reports a problem with the key `name` of this check.
    pub fn report_at(&mut self, name: &str, reason: impl Into<String>) {
        self.problems.push(ConfigProblem::new(format!("{}.{name}", self.key), reason));
    }

    /// Reports a problem with this check as a whole.
    pub fn report(&mut self, reason: impl Into<String>) {
        self.problems.push(ConfigProblem::new(self.key, reason));
    }

    /// Deserialises the kind's keys into its settings struct, which should
    /// `deny_unknown_fields`; a problem names the key it is about.
    pub fn fields<T: DeserializeOwned>(&mut self) -> Option<T> {
        let table = self.table.take().unwrap_or_default();
        match serde_path_to_error::deserialize(toml::Value::Table(table)) {
            Ok(fields) => Some(fields),
            Err(error) => {
                let path = error.path().to_string();
                let reason = serde_reason(error.into_inner());
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
/// work. A panic fails the attempt with output `check panicked`. (`Any`
/// lets healthd find its own kinds, such as heartbeats, behind the trait;
/// every `'static` type has it.)
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
pub trait Check: std::any::Any + Send + Sync {
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
    /// The raw error behind a failure (an error chain), for the log only:
    /// never shown to a caller, and logged when the check's state or
    /// output changes rather than on every attempt.
    pub detail: Option<String>,
}

impl Observation {
    /// A passing attempt with its values.
    pub fn pass(values: Vec<Option<f64>>) -> Self {
        Observation {
            status: HealthStatus::Pass,
            output: None,
            values,
            timed_out: false,
            detail: None,
        }
    }

    /// A warning: working, but someone should look.
    pub fn warn(output: impl Into<String>, values: Vec<Option<f64>>) -> Self {
        Observation {
            status: HealthStatus::Warn,
            output: Some(output.into()),
            values,
            timed_out: false,
            detail: None,
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
            detail: None,
        }
    }

    /// The same, with the raw error behind it, for the log only (it must
    /// hold no secret: kinds pass error chains that name no credentials).
    pub fn with_detail(self, detail: impl Into<String>) -> Self {
        Observation { detail: Some(detail.into()), ..self }
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
    duration_ms(started.elapsed())
}

/// Milliseconds, to the microsecond, for `responseTime`.
pub fn duration_ms(duration: Duration) -> Option<f64> {
    Some((duration.as_secs_f64() * 1_000.0 * 1_000.0).round() / 1_000.0)
}

/// The measurements of the kinds that observe only a response time.
pub const RESPONSE_TIME: &[(&str, &str)] = &[("responseTime", "ms")];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_a_kind_declares_is_one_its_settings_accept() {
        let policy = test_support::TEST_POLICY;
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
    fn the_timeout_output_names_the_deadline() {
        let observation = Observation::timed_out(Duration::from_millis(2000));
        assert_eq!(observation.output.as_deref(), Some("timed out after 2000 ms"));
        assert!(observation.timed_out);
    }
}
