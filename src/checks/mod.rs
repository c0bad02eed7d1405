//! The `Check` trait and one module per kind. A check makes one attempt and
//! says what it saw; the monitor owns deadlines, retries and thresholds.

mod disk;
mod http;
mod postgres;
mod tcp;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use healthd_models::{ComponentType, HealthStatus};

use crate::config::{CheckKind, CheckSettings};

pub use disk::DiskCheck;
pub use http::HttpCheck;
pub use postgres::PostgresCheck;
pub use tcp::TcpCheck;

/// A boxed future, so that `Check` stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One dependency to watch. Implementations never block a thread: the
/// monitor drops the future at the deadline, and that must cancel the work.
pub trait Check: Send + Sync + 'static {
    /// `componentType` in reports.
    fn component_type(&self) -> ComponentType;
    /// The names of the measurements `attempt` reports, the main one first;
    /// an attempt leaves out the values it could not take.
    fn measurements(&self) -> &'static [(&'static str, &'static str)];
    /// Makes one attempt.
    fn attempt(&self) -> BoxFuture<'_, Observation>;
}

/// What one attempt saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub status: HealthStatus,
    /// A category a person can act on; never raw error text.
    pub output: Option<String>,
    /// Values of `Check::measurements`, in order, where they were taken.
    pub values: Vec<Option<f64>>,
    pub timed_out: bool,
}

impl Observation {
    pub fn pass(values: Vec<Option<f64>>) -> Self {
        Observation { status: HealthStatus::Pass, output: None, values, timed_out: false }
    }

    pub fn warn(output: impl Into<String>, values: Vec<Option<f64>>) -> Self {
        Observation {
            status: HealthStatus::Warn,
            output: Some(output.into()),
            values,
            timed_out: false,
        }
    }

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

/// The measurements of the kinds that observe only a response time.
pub const RESPONSE_TIME: &[(&str, &str)] = &[("responseTime", "ms")];

/// Builds the check a config entry describes. Pools and clients are made
/// here, once; connections are opened by the first attempt.
pub fn build(settings: &CheckSettings) -> anyhow::Result<Box<dyn Check>> {
    let timeout = settings.policy.timeout;
    Ok(match &settings.kind {
        CheckKind::Postgres { dsn, query, pool_size } => {
            Box::new(PostgresCheck::new(&settings.name, dsn, query, *pool_size, timeout)?)
        }
        CheckKind::Http(http) => Box::new(HttpCheck::new(&settings.name, http, timeout)?),
        CheckKind::Tcp { address } => Box::new(TcpCheck::new(&settings.name, address)),
        CheckKind::Disk { path, warn_below, fail_below } => {
            Box::new(DiskCheck::new(path, *warn_below, *fail_below))
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
