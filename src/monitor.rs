//! One task per check: every `interval`, run it under its deadline, retry
//! with backoff, apply thresholds, and publish a new `Snapshot`. Probes only
//! ever read the snapshot.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use healthd_models::{ComponentType, HealthStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checks::{Check, Observation};
use crate::config::{CheckSettings, Policy};
use crate::history::SharedHistory;
use crate::report::{ServiceInfo, Snapshot};

/// Upper bounds (seconds) of the run-duration histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Everything known about one check: its settings, its latest reading and
/// its counters.
#[derive(Debug, Clone)]
pub struct CheckState {
    pub name: String,
    pub kind: &'static str,
    pub component_type: ComponentType,
    pub critical: bool,
    pub policy: Policy,
    pub measurements: &'static [(&'static str, &'static str)],
    pub reading: Option<Reading>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub counters: Counters,
    /// The last runs; shared, not copied, with every snapshot.
    pub history: SharedHistory,
}

/// The latest run of a check.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The status after thresholds.
    pub status: HealthStatus,
    /// What the latest run itself saw.
    pub observation: Observation,
    pub observed_at: DateTime<Utc>,
    pub observed_instant: Instant,
    pub duration: Duration,
}

/// Totals since start, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub runs: u64,
    pub failed_runs: u64,
    pub attempts: u64,
    pub timeouts: u64,
    /// Cumulative counts per `LATENCY_BUCKETS` bound.
    pub duration_buckets: [u64; LATENCY_BUCKETS.len()],
    pub duration_sum: f64,
}

impl Counters {
    fn record(&mut self, run: &RunResult) {
        self.runs += 1;
        self.attempts += u64::from(run.attempts);
        self.timeouts += u64::from(run.timeouts);
        if run.observation.status == HealthStatus::Fail {
            self.failed_runs += 1;
        }
        let seconds = run.duration.as_secs_f64();
        self.duration_sum += seconds;
        for (bucket, bound) in self.duration_buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }
}

#[derive(Debug)]
struct RunResult {
    observation: Observation,
    attempts: u32,
    timeouts: u32,
    duration: Duration,
}

/// Runs the checks and owns the published snapshot.
pub struct Monitor {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A cheap handle that reads the latest snapshot.
#[derive(Clone)]
pub struct SnapshotReader {
    shared: Arc<Shared>,
}

struct Shared {
    states: Mutex<Vec<CheckState>>,
    snapshot: ArcSwap<Snapshot>,
    service: ServiceInfo,
}

impl Monitor {
    /// Builds every check and starts one task each. Must run inside a tokio runtime.
    pub fn start(service: ServiceInfo, settings: &[CheckSettings]) -> anyhow::Result<Monitor> {
        let built: Vec<Arc<dyn Check>> =
            settings.iter().map(CheckSettings::build).collect::<anyhow::Result<_>>()?;
        Ok(Monitor::start_with(service, settings.iter().zip(built).collect()))
    }

    /// Starts the given checks; each pairs its settings with its implementation.
    pub fn start_with(
        service: ServiceInfo,
        checks: Vec<(&CheckSettings, Arc<dyn Check>)>,
    ) -> Monitor {
        let states: Vec<CheckState> = checks
            .iter()
            .map(|(settings, check)| CheckState {
                name: settings.name.clone(),
                kind: settings.kind,
                component_type: check.component_type(),
                critical: settings.critical,
                policy: settings.policy,
                measurements: check.measurements(),
                reading: None,
                consecutive_failures: 0,
                consecutive_successes: 0,
                counters: Counters::default(),
                history: SharedHistory::new(settings.policy.history),
            })
            .collect();
        let snapshot = Snapshot::render(&service, states.clone(), Instant::now());
        let shared = Arc::new(Shared {
            states: Mutex::new(states),
            snapshot: ArcSwap::from_pointee(snapshot),
            service,
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = checks
            .into_iter()
            .enumerate()
            .map(|(index, (settings, check))| {
                tokio::spawn(run_forever(
                    index,
                    settings.name.clone(),
                    check,
                    settings.policy,
                    shared.clone(),
                    stopped.clone(),
                ))
            })
            .collect();
        Monitor { shared, stop, tasks }
    }

    pub fn reader(&self) -> SnapshotReader {
        SnapshotReader { shared: self.shared.clone() }
    }

    /// Stops every check task, abandoning runs in flight, and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

impl SnapshotReader {
    /// The latest snapshot, without touching its reference count on the
    /// probe path. When a reading in it has gone stale (the monitor was
    /// stopped, or the runtime is starved), it is rendered again so that
    /// stale reads as `fail`.
    pub fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        let snapshot = self.shared.snapshot.load();
        let now = Instant::now();
        if !snapshot.is_stale(now) {
            return snapshot;
        }
        arc_swap::Guard::from_inner(self.shared.render_again(&snapshot, now))
    }
}

/// Resolves when `Monitor::stop` asks; a dropped `Monitor` (an embedding
/// app that kept only the reader) leaves the checks running.
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    if stopped.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run_forever(
    index: usize,
    name: String,
    check: Arc<dyn Check>,
    policy: Policy,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(policy.interval);
    // A slow run delays the next one rather than causing a burst of runs.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop_requested(&mut stopped) => return,
        }
        let run = tokio::select! {
            run = run_once(&name, check.as_ref(), &policy) => run,
            _ = stop_requested(&mut stopped) => return,
        };
        shared.record(index, run);
    }
}

/// Said of an attempt that panicked; the panic's message goes to the log only.
pub const PANICKED: &str = "check panicked";

/// One run: attempts under the deadline, retried with full-jitter backoff.
async fn run_once(name: &str, check: &dyn Check, policy: &Policy) -> RunResult {
    let started = Instant::now();
    let mut timeouts = 0;
    let mut attempt = 0;
    loop {
        // A panic (in `attempt` itself or in its future) fails this attempt
        // only; the task and its schedule go on. Dropping the future at the
        // deadline still cancels the attempt.
        let attempt_caught = AssertUnwindSafe(async { check.attempt().await }).catch_unwind();
        let observation = match tokio::time::timeout(policy.timeout, attempt_caught).await {
            Ok(Ok(observation)) => observation,
            Ok(Err(panic)) => {
                tracing::error!(
                    check = name,
                    panic = panic_message(panic.as_ref()),
                    "check panicked"
                );
                Observation::fail(PANICKED)
            }
            Err(_) => Observation::timed_out(policy.timeout),
        };
        if observation.timed_out {
            timeouts += 1;
        }
        if observation.status != HealthStatus::Fail || attempt == policy.retries {
            return RunResult {
                observation,
                attempts: attempt + 1,
                timeouts,
                duration: started.elapsed(),
            };
        }
        let cap = policy.backoff_cap(attempt);
        tokio::time::sleep(cap.mul_f64(fastrand::f64())).await;
        attempt += 1;
    }
}

/// The text a panic was raised with, when it is one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "(not a string)",
    }
}

impl Shared {
    /// Renders `seen` again at `now`, so that the readings in it that went
    /// stale read as `fail`, and publishes that unless a newer snapshot was
    /// published meanwhile: a probe must never put back older readings over
    /// a run that just finished. Returns what is published.
    fn render_again(&self, seen: &Arc<Snapshot>, now: Instant) -> Arc<Snapshot> {
        let fresh = Arc::new(Snapshot::render(&self.service, seen.states.clone(), now));
        let previous = self.snapshot.compare_and_swap(seen, fresh.clone());
        if Arc::ptr_eq(&previous, seen) {
            fresh
        } else {
            arc_swap::Guard::into_inner(previous)
        }
    }

    fn record(&self, index: usize, run: RunResult) {
        let mut states = self.states.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = &mut states[index];
        state.counters.record(&run);
        if run.observation.status == HealthStatus::Fail {
            state.consecutive_failures += 1;
            state.consecutive_successes = 0;
        } else {
            state.consecutive_successes += 1;
            state.consecutive_failures = 0;
        }
        let previous = state.reading.as_ref().map(|reading| reading.status);
        let status = next_status(
            previous,
            run.observation.status,
            state.consecutive_failures,
            state.consecutive_successes,
            &state.policy,
        );
        if previous != Some(status) {
            let from = previous.map_or("none".to_string(), |previous| previous.to_string());
            let output = run.observation.output.as_deref().unwrap_or("");
            tracing::info!(check = %state.name, %from, to = %status, output, "check status changed");
        }
        let observed_at = Utc::now();
        state.history.with(|history| {
            let value = run.observation.values.first().copied().flatten();
            let output = run.observation.output.as_deref();
            history.push(observed_at, status, value, output, run.duration);
        });
        state.reading = Some(Reading {
            status,
            observation: run.observation,
            observed_at,
            observed_instant: Instant::now(),
            duration: run.duration,
        });
        let snapshot = Snapshot::render(&self.service, states.clone(), Instant::now());
        self.snapshot.store(Arc::new(snapshot));
    }
}

/// The status to report after a run, given the thresholds: a check turns
/// `fail` after `failure_threshold` failed runs in a row and back after
/// `success_threshold` good ones. The first run is taken as it is.
fn next_status(
    previous: Option<HealthStatus>,
    observed: HealthStatus,
    failures_in_a_row: u32,
    successes_in_a_row: u32,
    policy: &Policy,
) -> HealthStatus {
    match previous {
        None => observed,
        Some(HealthStatus::Fail)
            if observed != HealthStatus::Fail && successes_in_a_row < policy.success_threshold =>
        {
            HealthStatus::Fail
        }
        Some(held)
            if held != HealthStatus::Fail
                && observed == HealthStatus::Fail
                && failures_in_a_row < policy.failure_threshold =>
        {
            held
        }
        _ => observed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks;
    use HealthStatus::{Fail, Pass, Warn};

    const POLICY: Policy = Policy {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(1),
        retries: 0,
        backoff: Duration::from_millis(100),
        failure_threshold: 3,
        success_threshold: 2,
        history: 120,
    };

    #[test]
    fn the_first_run_is_taken_as_it_is() {
        assert_eq!(next_status(None, Fail, 1, 0, &POLICY), Fail);
        assert_eq!(next_status(None, Warn, 0, 1, &POLICY), Warn);
    }

    #[test]
    fn failures_flip_only_at_the_threshold() {
        assert_eq!(next_status(Some(Pass), Fail, 1, 0, &POLICY), Pass);
        assert_eq!(next_status(Some(Pass), Fail, 2, 0, &POLICY), Pass);
        assert_eq!(next_status(Some(Pass), Fail, 3, 0, &POLICY), Fail);
        assert_eq!(next_status(Some(Warn), Fail, 2, 0, &POLICY), Warn);
    }

    #[test]
    fn recovery_flips_only_at_the_threshold() {
        assert_eq!(next_status(Some(Fail), Pass, 0, 1, &POLICY), Fail);
        assert_eq!(next_status(Some(Fail), Pass, 0, 2, &POLICY), Pass);
        assert_eq!(next_status(Some(Fail), Warn, 0, 2, &POLICY), Warn);
    }

    #[test]
    fn pass_and_warn_follow_each_other_at_once() {
        assert_eq!(next_status(Some(Pass), Warn, 0, 1, &POLICY), Warn);
        assert_eq!(next_status(Some(Warn), Pass, 0, 1, &POLICY), Pass);
    }

    /// A check that plays a script: each attempt takes the next outcome,
    /// `None` being an attempt that never ends.
    struct Scripted(Mutex<std::collections::VecDeque<Option<Observation>>>);

    impl Scripted {
        fn new(outcomes: Vec<Option<Observation>>) -> Self {
            Scripted(Mutex::new(outcomes.into()))
        }
    }

    impl Check for Scripted {
        fn component_type(&self) -> ComponentType {
            ComponentType::Component
        }
        fn measurements(&self) -> &'static [(&'static str, &'static str)] {
            checks::RESPONSE_TIME
        }
        fn attempt(&self) -> checks::BoxFuture<'_, Observation> {
            let next = self.0.lock().unwrap().pop_front().flatten();
            Box::pin(async move {
                match next {
                    Some(observation) => observation,
                    None => std::future::pending().await,
                }
            })
        }
    }

    const QUICK: Policy = Policy {
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(50),
        retries: 1,
        backoff: Duration::from_millis(5),
        failure_threshold: 1,
        success_threshold: 1,
        history: 120,
    };

    #[tokio::test]
    async fn a_failed_attempt_is_retried_within_the_run() {
        let check = Scripted::new(vec![
            Some(Observation::fail("HTTP 500")),
            Some(Observation::pass(vec![Some(1.0)])),
        ]);
        let run = run_once("c", &check, &QUICK).await;
        assert_eq!(run.observation.status, Pass);
        assert_eq!(run.attempts, 2);
    }

    #[tokio::test]
    async fn retries_stop_at_the_configured_count() {
        let fail = || Some(Observation::fail("HTTP 500"));
        let check = Scripted::new(vec![fail(), fail(), fail()]);
        let run = run_once("c", &check, &QUICK).await;
        assert_eq!(run.observation.output.as_deref(), Some("HTTP 500"));
        assert_eq!(run.attempts, 2);
    }

    #[tokio::test]
    async fn an_attempt_that_never_ends_is_cut_at_the_deadline() {
        let check = Scripted::new(vec![None, None]);
        let run = run_once("c", &check, &QUICK).await;
        assert_eq!(run.observation.status, Fail);
        assert_eq!(run.observation.output.as_deref(), Some("timed out after 50 ms"));
        assert_eq!((run.attempts, run.timeouts), (2, 2));
        assert!(run.duration < QUICK.worst_case() + Duration::from_millis(500), "{run:?}");
    }

    /// A check whose attempts panic: in `attempt` itself (odd calls) or in
    /// the future it returns (even calls).
    struct Panicking(std::sync::atomic::AtomicU32);

    impl Check for Panicking {
        fn component_type(&self) -> ComponentType {
            ComponentType::Component
        }
        fn measurements(&self) -> &'static [(&'static str, &'static str)] {
            checks::RESPONSE_TIME
        }
        fn attempt(&self) -> checks::BoxFuture<'_, Observation> {
            if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst).is_multiple_of(2) {
                panic!("secret detail in attempt");
            }
            Box::pin(async { panic!("secret detail in the future") })
        }
    }

    #[tokio::test]
    async fn a_panicking_attempt_is_a_failure_that_keeps_the_task() {
        let check = Panicking(Default::default());
        let run = run_once("c", &check, &QUICK).await;
        assert_eq!(run.observation.status, Fail);
        assert_eq!(run.observation.output.as_deref(), Some(PANICKED));
        // Both kinds of panic were caught, and the failed attempt retried.
        assert_eq!(run.attempts, 2);
        let again = run_once("c", &check, &QUICK).await;
        assert_eq!(again.observation.output.as_deref(), Some(PANICKED));
    }

    /// A check whose attempt never ends and says when its future is dropped.
    struct Hanging(Arc<std::sync::atomic::AtomicBool>);

    struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Check for Hanging {
        fn component_type(&self) -> ComponentType {
            ComponentType::Component
        }
        fn measurements(&self) -> &'static [(&'static str, &'static str)] {
            checks::RESPONSE_TIME
        }
        fn attempt(&self) -> checks::BoxFuture<'_, Observation> {
            let guard = SetOnDrop(self.0.clone());
            Box::pin(async move {
                let _guard = guard;
                std::future::pending().await
            })
        }
    }

    #[tokio::test]
    async fn the_deadline_drops_the_attempt_through_the_panic_catch() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let policy = Policy { retries: 0, ..QUICK };
        let run = run_once("c", &Hanging(dropped.clone()), &policy).await;
        assert_eq!(run.observation.output.as_deref(), Some("timed out after 50 ms"));
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "the attempt was not dropped");
    }

    #[test]
    fn a_probe_never_puts_older_readings_back_over_a_newer_snapshot() {
        let service = ServiceInfo::new("svc".into(), None);
        let seen = Arc::new(Snapshot::render(&service, Vec::new(), Instant::now()));
        let shared = Shared {
            states: Mutex::new(Vec::new()),
            snapshot: ArcSwap::new(seen.clone()),
            service: service.clone(),
        };
        // A run publishes after the probe loaded `seen` and before it renders.
        let newer = Arc::new(Snapshot::render(&service, Vec::new(), Instant::now()));
        shared.snapshot.store(newer.clone());
        let answered = shared.render_again(&seen, Instant::now());
        assert!(Arc::ptr_eq(&answered, &newer));
        assert!(Arc::ptr_eq(&shared.snapshot.load_full(), &newer));
        // With nothing newer, the new rendering is published.
        let rendered = shared.render_again(&newer, Instant::now());
        assert!(!Arc::ptr_eq(&rendered, &newer));
        assert!(Arc::ptr_eq(&shared.snapshot.load_full(), &rendered));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut counters = Counters::default();
        let run = RunResult {
            observation: Observation::pass(vec![]),
            attempts: 1,
            timeouts: 0,
            duration: Duration::from_millis(30),
        };
        counters.record(&run);
        assert_eq!(counters.duration_buckets[..4], [0, 0, 0, 0]);
        assert!(counters.duration_buckets[4..].iter().all(|count| *count == 1));
    }
}
