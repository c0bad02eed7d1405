//! One check's state: its settings, its latest reading, its counters and
//! thresholds. A run's result is taken in here (`CheckState::record`);
//! rendering and the monitor build on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
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
    /// What the log has been told of this check.
    pub log: LogMemory,
    /// The last runs; shared, not copied, with every snapshot.
    pub history: SharedHistory,
    /// The status after thresholds a store remembered from before a
    /// restart: the first fresh run is judged against it, as against a
    /// reading, so that a restart neither hides a failure nor announces
    /// it again. Gone once a fresh reading exists.
    pub remembered_status: Option<HealthStatus>,
}

/// A finished run, as the engine's consumers (the store) take it.
#[derive(Debug, Clone)]
pub struct FinishedRun {
    pub check: Arc<str>,
    /// When the run ended.
    pub time: DateTime<Utc>,
    /// What the run itself saw.
    pub observed: HealthStatus,
    /// After thresholds.
    pub status: HealthStatus,
    /// The status after thresholds before this run, if there was one.
    pub previous: Option<HealthStatus>,
    /// The main measurement.
    pub value: Option<f64>,
    pub output: Option<Arc<str>>,
    pub duration: Duration,
    /// How many runs the check keeps (its `history`).
    pub keep: u32,
}

/// Takes each finished run. Called on the check's task: it must not block
/// or wait (a store queues, and drops what does not fit).
pub trait RunSink: Send + Sync {
    fn finished(&self, run: FinishedRun);
}

/// Several consumers of the runs (the store and the alerts), each given
/// every run.
pub struct FanOut(pub Vec<Arc<dyn RunSink>>);

impl RunSink for FanOut {
    fn finished(&self, run: FinishedRun) {
        if let Some((last, others)) = self.0.split_last() {
            for sink in others {
                sink.finished(run.clone());
            }
            last.finished(run);
        }
    }
}

/// What a store remembers of a check from before a restart.
#[derive(Debug, Clone, Default)]
pub struct Remembered {
    /// Its last runs, oldest first.
    pub runs: Vec<RememberedRun>,
    /// The status after thresholds, and since when.
    pub status: Option<(HealthStatus, DateTime<Utc>)>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Its runs and failed runs since it was first recorded.
    pub runs_total: u64,
    pub failed_runs_total: u64,
}

/// One remembered run.
#[derive(Debug, Clone, PartialEq)]
pub struct RememberedRun {
    pub time: DateTime<Utc>,
    pub status: HealthStatus,
    pub value: Option<f64>,
    pub output: Option<String>,
    pub duration: Duration,
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
            log: LogMemory::default(),
            history: SharedHistory::new(settings.policy.history),
            remembered_status: None,
        }
    }

    /// Takes back what a store remembered: the ring, the uptime counts,
    /// the status after thresholds and since when, the consecutive counts.
    /// The check still has no reading: startup waits for a fresh run.
    pub fn remember(&mut self, remembered: Remembered) {
        self.history.with(|history| {
            for run in &remembered.runs {
                history.push(run.time, run.status, run.value, run.output.as_deref(), run.duration);
            }
            history.set_counts(
                remembered.runs_total,
                remembered.failed_runs_total,
                remembered.status.map(|(_, since)| since),
            );
        });
        self.remembered_status = remembered.status.map(|(status, _)| status);
        self.consecutive_failures = remembered.consecutive_failures;
        self.consecutive_successes = remembered.consecutive_successes;
    }

    /// Takes a run in: counters, thresholds, the new reading; says what
    /// finished when the engine has consumers (`for_sink`), so that a
    /// healthd without a store or alerts copies nothing per run for them.
    pub fn record(&mut self, run: RunResult, for_sink: bool) -> Option<FinishedRun> {
        self.counters.record(&run);
        if run.observation.status == HealthStatus::Fail {
            self.consecutive_failures += 1;
            self.consecutive_successes = 0;
        } else {
            self.consecutive_successes += 1;
            self.consecutive_failures = 0;
        }
        let previous =
            self.reading.as_ref().map(|reading| reading.status).or(self.remembered_status.take());
        let status = next_status(
            previous,
            run.observation.status,
            self.consecutive_failures,
            self.consecutive_successes,
            &self.policy,
        );
        let output = run.observation.output.as_deref();
        let line = self.log.judge(previous, status, output, Instant::now());
        log_run(&self.name, line, previous, status, &run.observation);
        // Microseconds, as a store keeps them: a restart gives back the same times.
        let observed_at = Utc::now().trunc_subsecs(6);
        let value = run.observation.values.first().copied().flatten();
        self.history.with(|history| {
            let output = run.observation.output.as_deref();
            history.push(observed_at, status, value, output, run.duration);
        });
        let finished = for_sink.then(|| FinishedRun {
            check: Arc::from(self.name.as_str()),
            time: observed_at,
            observed: run.observation.status,
            status,
            previous,
            value,
            output: run.observation.output.as_deref().map(Arc::from),
            duration: run.duration,
            keep: self.policy.history,
        });
        self.reading = Some(Reading {
            status,
            observation: run.observation,
            observed_at,
            observed_instant: Instant::now(),
            duration: run.duration,
        });
        finished
    }
}

/// A check that changed status at least this many times in its last
/// `FLAP_WINDOW` runs (20%, Nagios' default high flap threshold) is
/// flapping: its changes are no longer logged one by one. Counted in runs
/// rather than minutes, so that it means the same at every interval; a
/// dependency up 5 s and down 5 s under a 1 s check changes 4 times in 20.
pub const FLAP_START: u32 = 4;
/// It has settled when its last `FLAP_WINDOW` runs hold at most this many
/// changes (5%, Nagios' default low threshold).
pub const FLAP_STOP: u32 = 1;
/// The runs flapping is judged over.
pub const FLAP_WINDOW: u32 = 20;
/// A check that keeps failing the same way is summed up in one line at
/// most this often; the runs between are logged at DEBUG.
pub const REPEAT_SUMMARY_EVERY: Duration = Duration::from_secs(600);

/// What the log has been told of one check, so that it hears of changes
/// (status, output, flapping) and a summary of repeats, not every run.
#[derive(Debug, Clone, Default)]
pub struct LogMemory {
    /// Which of the last `FLAP_WINDOW` runs changed the status (bit 0: the latest).
    changes: u32,
    /// Whether the check is flapping now (shown in `/health` and `/metrics`).
    pub flapping: bool,
    /// The output the log last heard for the current status.
    logged_output: Option<String>,
    /// Runs alike since the log last heard of the check.
    repeats: u64,
    /// When the log last heard of it.
    logged_at: Option<Instant>,
}

/// What one run is worth telling the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLine {
    /// The status changed (or the first reading is not a pass).
    Changed,
    /// Still failing or warning, but for another reason.
    OutputChanged,
    /// The same as before: only at DEBUG.
    Repeat,
    /// The same as before for `REPEAT_SUMMARY_EVERY`: one line with the count.
    StillTheSame { runs: u64 },
    /// It started flapping: one line, then its changes go to DEBUG.
    StartedFlapping { changes: u32 },
    /// It settled.
    StoppedFlapping,
}

impl LogMemory {
    /// Takes a run in (its status after thresholds and output) and says
    /// what the log should hear of it.
    pub fn judge(
        &mut self,
        previous: Option<HealthStatus>,
        status: HealthStatus,
        output: Option<&str>,
        now: Instant,
    ) -> LogLine {
        let changed = previous.is_some_and(|previous| previous != status);
        let window = (1u32 << FLAP_WINDOW) - 1;
        self.changes = ((self.changes << 1) | u32::from(changed)) & window;
        let recent = self.changes.count_ones();
        let line = if !self.flapping && recent >= FLAP_START {
            self.flapping = true;
            LogLine::StartedFlapping { changes: recent }
        } else if self.flapping && recent <= FLAP_STOP {
            self.flapping = false;
            LogLine::StoppedFlapping
        } else if self.flapping {
            LogLine::Repeat
        } else if changed || (previous.is_none() && status != HealthStatus::Pass) {
            LogLine::Changed
        } else if status != HealthStatus::Pass && output != self.logged_output.as_deref() {
            LogLine::OutputChanged
        } else if status != HealthStatus::Pass
            && self.logged_at.is_some_and(|at| now.duration_since(at) >= REPEAT_SUMMARY_EVERY)
        {
            LogLine::StillTheSame { runs: self.repeats + 1 }
        } else {
            self.repeats += 1;
            return LogLine::Repeat;
        };
        self.logged_output = output.map(str::to_string);
        self.logged_at = Some(now);
        self.repeats = 0;
        line
    }
}

/// Writes what `line` says of a run: WARN when a check turns `warn` or
/// `fail` or starts flapping, INFO when it recovers or settles, DEBUG for
/// repeats. The raw error (`detail`) goes with the line, never to a caller.
fn log_run(
    check: &str,
    line: LogLine,
    previous: Option<HealthStatus>,
    status: HealthStatus,
    observation: &Observation,
) {
    let output = observation.output.as_deref().unwrap_or("");
    let detail = observation.detail.as_deref().unwrap_or("");
    let from = previous.map_or("none".to_string(), |previous| previous.to_string());
    match line {
        LogLine::Changed if status == HealthStatus::Pass => {
            tracing::info!(check, %from, to = %status, "check recovered")
        }
        LogLine::Changed => {
            tracing::warn!(check, %from, to = %status, output, detail, "check status changed")
        }
        LogLine::OutputChanged => {
            tracing::warn!(check, status = %status, output, detail, "check output changed")
        }
        LogLine::StillTheSame { runs } => {
            tracing::info!(check, status = %status, output, runs, "check still the same since the last line")
        }
        LogLine::StartedFlapping { changes } => tracing::warn!(
            check,
            status = %status,
            changes,
            runs = FLAP_WINDOW,
            "check is flapping: its changes are logged at DEBUG until it settles"
        ),
        LogLine::StoppedFlapping => {
            tracing::info!(check, status = %status, output, "check stopped flapping")
        }
        LogLine::Repeat => {
            tracing::debug!(check, %from, status = %status, output, detail, "check run")
        }
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

    #[test]
    fn the_log_hears_of_a_change_once_and_of_repeats_in_a_summary() {
        let mut log = LogMemory::default();
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(log.judge(None, Pass, None, at(0)), LogLine::Repeat);
        assert_eq!(
            log.judge(Some(Pass), Fail, Some("connection refused"), at(1)),
            LogLine::Changed
        );
        for second in 2..100 {
            assert_eq!(
                log.judge(Some(Fail), Fail, Some("connection refused"), at(second)),
                LogLine::Repeat
            );
        }
        assert_eq!(
            log.judge(Some(Fail), Fail, Some("timed out after 2000 ms"), at(100)),
            LogLine::OutputChanged
        );
        assert_eq!(
            log.judge(Some(Fail), Fail, Some("timed out after 2000 ms"), at(101)),
            LogLine::Repeat
        );
        let summary = log.judge(Some(Fail), Fail, Some("timed out after 2000 ms"), at(700));
        assert_eq!(summary, LogLine::StillTheSame { runs: 2 });
        assert_eq!(log.judge(Some(Fail), Pass, None, at(701)), LogLine::Changed);
        assert_eq!(log.judge(Some(Pass), Pass, None, at(2000)), LogLine::Repeat);
    }

    #[test]
    fn a_failing_first_reading_is_a_change_and_a_passing_one_is_not() {
        let now = Instant::now();
        assert_eq!(LogMemory::default().judge(None, Fail, Some("HTTP 500"), now), LogLine::Changed);
        assert_eq!(LogMemory::default().judge(None, Warn, Some("low"), now), LogLine::Changed);
        assert_eq!(LogMemory::default().judge(None, Pass, None, now), LogLine::Repeat);
    }

    #[test]
    fn flapping_is_one_line_when_it_starts_and_one_when_it_settles() {
        let mut log = LogMemory::default();
        let now = Instant::now();
        let mut previous = Pass;
        log.judge(None, Pass, None, now);
        let mut lines = Vec::new();
        // Up and down every run for 30 runs, then steady for 30.
        for run in 0..60 {
            let status = if run < 30 && run % 2 == 0 { Fail } else { Pass };
            let output = (status == Fail).then_some("connection refused");
            lines.push(log.judge(Some(previous), status, output, now));
            previous = status;
        }
        let changes = lines.iter().filter(|line| **line == LogLine::Changed).count();
        assert_eq!(changes, FLAP_START as usize - 1, "{lines:?}");
        assert_eq!(
            lines.iter().filter(|line| matches!(line, LogLine::StartedFlapping { .. })).count(),
            1
        );
        assert_eq!(lines.iter().filter(|line| **line == LogLine::StoppedFlapping).count(), 1);
        assert!(!log.flapping);
    }
}
