//! Checks from code: an async closure, or blocking code kept off the async
//! threads, made into a `Check` that reports its run time as `responseTime`.
//! The monitor gives them the deadline, retries, thresholds and panic
//! catch every check gets.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use healthd_models::ComponentType;

use crate::base::policy::Policy;
use crate::checks::{elapsed_ms, BoxFuture, Check, KindSettings, Observation, RESPONSE_TIME};

/// What a check from code saw: pass, or warn or fail with an output.
///
/// The output is shown to every caller allowed to see details (and in the
/// log): make it a category a person can act on, such as `"consumer
/// stalled"` or `"licence expires in 3 days"`, never raw error text that
/// may hold hosts, users or secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// All is well.
    Pass,
    /// Working, but someone should look: the service stays `pass` or `warn`.
    Warn(String),
    /// Not working: the service is `fail` if the check is critical, else `warn`.
    Fail(String),
}

impl Outcome {
    /// `Outcome::Warn` with `output`.
    pub fn warn(output: impl Into<String>) -> Self {
        Outcome::Warn(output.into())
    }

    /// `Outcome::Fail` with `output`.
    pub fn fail(output: impl Into<String>) -> Self {
        Outcome::Fail(output.into())
    }

    fn observe(self, started: Instant) -> Observation {
        let values = vec![elapsed_ms(started)];
        match self {
            Outcome::Pass => Observation::pass(values),
            Outcome::Warn(output) => Observation::warn(output, values),
            Outcome::Fail(output) => Observation::fail_with(output, values),
        }
    }
}

/// A check from an async closure, called once per attempt; its run time is
/// reported as `responseTime`, its `componentType` is `component`.
///
/// Like every check, it runs under its policy's deadline: at the timeout
/// the future is dropped, so it must not block its thread (use
/// [`blocking_check_fn`] for code that does). A panic makes the attempt
/// `fail` with output `check panicked`.
///
/// ```
/// use healthd::{check_fn, Outcome};
/// let queue = check_fn(|| async {
///     let backlog = 12; // the app's own reading
///     if backlog > 1000 { Outcome::warn("backlog above 1000") } else { Outcome::Pass }
/// });
/// # let _ = queue;
/// ```
pub fn check_fn<F, Fut>(attempt: F) -> impl Check
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    FnCheck(attempt)
}

struct FnCheck<F>(F);

impl<F, Fut> Check for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        let started = Instant::now();
        let attempt = (self.0)();
        Box::pin(async move { attempt.await.observe(started) })
    }
}

/// Said while an earlier call of a blocking check is still running.
pub const STILL_RUNNING: &str = "still running since an earlier attempt";

/// A check from blocking code (a synchronous client, a file lock, an FFI
/// call), run on tokio's blocking thread pool so that it never holds up
/// the async threads that run the other checks and serve the probes.
///
/// At most one call per check is in flight: the deadline abandons the wait
/// for a call, not the thread running it (a blocking call cannot be
/// cancelled). While a call is stuck, later attempts answer `fail` with
/// output `still running since an earlier attempt` at once instead of
/// taking another thread each, so a hung dependency costs one thread of
/// the pool (whose size the runtime bounds: 512 threads by default), not
/// one per interval. A panic makes the attempt `fail` with output `check
/// panicked`, and the next attempt calls again.
///
/// ```
/// use healthd::{blocking_check_fn, Outcome};
/// let licence = blocking_check_fn(|| {
///     match std::fs::metadata("/etc/hostname") {
///         Ok(_) => Outcome::Pass,
///         Err(_) => Outcome::fail("licence file missing"),
///     }
/// });
/// # let _ = licence;
/// ```
pub fn blocking_check_fn<F>(call: F) -> impl Check
where
    F: Fn() -> Outcome + Send + Sync + 'static,
{
    BlockingCheck { call: Arc::new(call), in_flight: Arc::default() }
}

struct BlockingCheck<F> {
    call: Arc<F>,
    in_flight: Arc<AtomicBool>,
}

/// Clears the in-flight flag when the call ends, by return or by panic.
struct InFlight(Arc<AtomicBool>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<F> Check for BlockingCheck<F>
where
    F: Fn() -> Outcome + Send + Sync + 'static,
{
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        let call = self.call.clone();
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            let started = Instant::now();
            if in_flight.swap(true, Ordering::AcqRel) {
                return Observation::fail_with(STILL_RUNNING, vec![elapsed_ms(started)]);
            }
            let guard = InFlight(in_flight);
            let call = tokio::task::spawn_blocking(move || {
                let _guard = guard;
                call()
            });
            match call.await {
                Ok(outcome) => outcome.observe(started),
                // Raised again here, so that the monitor treats it as any
                // check's panic (logged, `check panicked`).
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => Observation::fail("check cancelled"),
            }
        })
    }
}

/// The kind label of checks from code, in logs and metrics.
pub const CODE_KIND: &str = "code";

/// The settings of a check from code: the check itself, built already.
pub struct Prebuilt(pub Arc<dyn Check>);

impl fmt::Debug for Prebuilt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Prebuilt")
    }
}

impl KindSettings for Prebuilt {
    fn descriptors(&self) -> usize {
        // Unknown: a check from code is counted as one connection and one
        // being replaced.
        2
    }

    fn build(&self, _name: &str, _policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use healthd_models::HealthStatus;

    use super::*;

    #[tokio::test]
    async fn a_closure_reports_its_outcome_and_its_time() {
        let check = check_fn(|| async { Outcome::warn("backlog") });
        let observation = check.attempt().await;
        assert_eq!(observation.status, HealthStatus::Warn);
        assert_eq!(observation.output.as_deref(), Some("backlog"));
        assert_eq!(observation.values.len(), check.measurements().len());
        assert!(observation.values[0].is_some());
    }

    #[tokio::test]
    async fn a_blocking_check_has_at_most_one_call_in_flight() {
        let calls = Arc::new(AtomicU32::new(0));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let counted = calls.clone();
        let check = blocking_check_fn(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = released.lock().unwrap().recv();
            Outcome::Pass
        });
        // The first attempt blocks; the monitor's deadline abandons it.
        let first = tokio::time::timeout(Duration::from_millis(100), check.attempt()).await;
        assert!(first.is_err());
        let second = check.attempt().await;
        assert_eq!(second.output.as_deref(), Some(STILL_RUNNING));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Once the stuck call returns, the next attempt calls again.
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            release.send(()).unwrap();
            let observation = check.attempt().await;
            if observation.status == HealthStatus::Pass {
                break;
            }
            assert!(Instant::now() < deadline, "the stuck call never cleared: {observation:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(calls.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test]
    async fn a_blocking_call_that_panics_frees_its_slot() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let check = blocking_check_fn(move || {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first call panics");
            }
            Outcome::Pass
        });
        let attempt = std::panic::AssertUnwindSafe(check.attempt());
        let panicked = futures_util::FutureExt::catch_unwind(attempt).await;
        assert!(panicked.is_err(), "the panic reaches the monitor's catch");
        assert_eq!(check.attempt().await.status, HealthStatus::Pass);
    }
}
