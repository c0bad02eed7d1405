//! One check's state: its settings, its latest reading, its counters and
//! thresholds. A run's result is taken in here (`CheckState::record`);
//! rendering and the monitor build on it.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use healthd_models::{ComponentType, HealthStatus};

use crate::base::policy::Policy;
use crate::checks::{Check, Observation};
use crate::config::CheckSettings;
use crate::engine::history::SharedHistory;

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
    pub fn record(&mut self, run: &RunResult) {
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

/// What one run did: its last attempt's observation, attempts and time.
#[derive(Debug)]
pub struct RunResult {
    pub observation: Observation,
    pub attempts: u32,
    pub timeouts: u32,
    pub duration: Duration,
}

impl CheckState {
    pub fn new(settings: &CheckSettings, check: &dyn Check) -> CheckState {
        CheckState {
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
        }
    }

    /// Takes a run in: counters, thresholds, the new reading.
    pub fn record(&mut self, run: RunResult) {
        self.counters.record(&run);
        if run.observation.status == HealthStatus::Fail {
            self.consecutive_failures += 1;
            self.consecutive_successes = 0;
        } else {
            self.consecutive_successes += 1;
            self.consecutive_failures = 0;
        }
        let previous = self.reading.as_ref().map(|reading| reading.status);
        let status = next_status(
            previous,
            run.observation.status,
            self.consecutive_failures,
            self.consecutive_successes,
            &self.policy,
        );
        if previous != Some(status) {
            let from = previous.map_or("none".to_string(), |previous| previous.to_string());
            let output = run.observation.output.as_deref().unwrap_or("");
            tracing::info!(check = %self.name, %from, to = %status, output, "check status changed");
        }
        let observed_at = Utc::now();
        self.history.with(|history| {
            let value = run.observation.values.first().copied().flatten();
            let output = run.observation.output.as_deref();
            history.push(observed_at, status, value, output, run.duration);
        });
        self.reading = Some(Reading {
            status,
            observation: run.observation,
            observed_at,
            observed_instant: Instant::now(),
            duration: run.duration,
        });
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
    use crate::checks::test_support::THRESHOLDS_3_2;
    use HealthStatus::{Fail, Pass, Warn};

    #[test]
    fn the_first_run_is_taken_as_it_is() {
        assert_eq!(next_status(None, Fail, 1, 0, &THRESHOLDS_3_2), Fail);
        assert_eq!(next_status(None, Warn, 0, 1, &THRESHOLDS_3_2), Warn);
    }

    #[test]
    fn failures_flip_only_at_the_threshold() {
        assert_eq!(next_status(Some(Pass), Fail, 1, 0, &THRESHOLDS_3_2), Pass);
        assert_eq!(next_status(Some(Pass), Fail, 2, 0, &THRESHOLDS_3_2), Pass);
        assert_eq!(next_status(Some(Pass), Fail, 3, 0, &THRESHOLDS_3_2), Fail);
        assert_eq!(next_status(Some(Warn), Fail, 2, 0, &THRESHOLDS_3_2), Warn);
    }

    #[test]
    fn recovery_flips_only_at_the_threshold() {
        assert_eq!(next_status(Some(Fail), Pass, 0, 1, &THRESHOLDS_3_2), Fail);
        assert_eq!(next_status(Some(Fail), Pass, 0, 2, &THRESHOLDS_3_2), Pass);
        assert_eq!(next_status(Some(Fail), Warn, 0, 2, &THRESHOLDS_3_2), Warn);
    }

    #[test]
    fn pass_and_warn_follow_each_other_at_once() {
        assert_eq!(next_status(Some(Pass), Warn, 0, 1, &THRESHOLDS_3_2), Warn);
        assert_eq!(next_status(Some(Warn), Pass, 0, 1, &THRESHOLDS_3_2), Pass);
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
