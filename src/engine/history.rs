//! Per-check history: the last `history` runs of a check in a fixed ring
//! (time, status after thresholds, main value, output, duration), and its
//! uptime over those runs and since start. Recording a run is O(1): one
//! entry in, at most one out, two counters adjusted; nothing here depends
//! on how many checks there are or how many runs are kept.
//!
//! A check's task is the only writer; `/health/checks/{name}/history`
//! reads a copy under the same short lock, so a ring is shared (`Arc`)
//! rather than copied with the check's state into every snapshot.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use healthd_models::HealthStatus;

use crate::base::policy::MAX_HISTORY;

/// One run, as the history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct PastRun {
    /// When the run ended.
    pub time: DateTime<Utc>,
    /// The main measurement's value; NaN when the run did not take it
    /// (half the size of an `Option<f64>`; see `value`).
    value: f64,
    /// Shared with the entry before when it says the same: a check that
    /// keeps failing the same way keeps one copy of the text.
    pub output: Option<Arc<str>>,
    /// Microseconds, saturating at about 71 minutes (a run is bounded by
    /// its interval, and `check-config` refuses intervals that long with
    /// a run that long).
    pub duration_micros: u32,
    /// After thresholds.
    pub status: HealthStatus,
}

impl PastRun {
    /// The main measurement's value, when the run took it (and it is a number).
    pub fn value(&self) -> Option<f64> {
        (!self.value.is_nan()).then_some(self.value)
    }
}

/// The ring and the uptime counters of one check.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    entries: VecDeque<PastRun>,
    /// Entries in the ring whose status is `fail`.
    failed_in_window: u32,
    runs_since_start: u64,
    failed_since_start: u64,
    /// When the latest run's status began.
    status_since: Option<DateTime<Utc>>,
}

/// Uptime figures: a share is absent when there is no run to share out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Uptime {
    pub runs: u32,
    pub failed_runs: u32,
    pub runs_since_start: u64,
    pub failed_runs_since_start: u64,
}

impl Uptime {
    /// The share of the kept runs that were not `fail`.
    pub fn window(&self) -> Option<f64> {
        share(u64::from(self.runs), u64::from(self.failed_runs))
    }

    /// The share of every run since start that was not `fail`.
    pub fn since_start(&self) -> Option<f64> {
        share(self.runs_since_start, self.failed_runs_since_start)
    }
}

fn share(runs: u64, failed: u64) -> Option<f64> {
    // Precision loss only past 2^53 runs.
    #[allow(clippy::cast_precision_loss)]
    (runs > 0).then(|| (runs - failed) as f64 / runs as f64)
}

impl History {
    /// A history keeping the last `capacity` runs; 0 keeps none but still
    /// counts the uptime since start.
    pub fn new(capacity: u32) -> History {
        let capacity = capacity.min(MAX_HISTORY) as usize;
        History {
            capacity,
            entries: VecDeque::with_capacity(capacity),
            failed_in_window: 0,
            runs_since_start: 0,
            failed_since_start: 0,
            status_since: None,
        }
    }

    /// Takes one run in.
    pub fn push(
        &mut self,
        time: DateTime<Utc>,
        status: HealthStatus,
        value: Option<f64>,
        output: Option<&str>,
        duration: Duration,
    ) {
        let failed = status == HealthStatus::Fail;
        self.runs_since_start += 1;
        self.failed_since_start += u64::from(failed);
        let previous = self.entries.back();
        if self.status_since.is_none() || previous.is_some_and(|entry| entry.status != status) {
            self.status_since = Some(time);
        }
        if self.capacity == 0 {
            // Without entries a change of status cannot be seen: the
            // latest run's time is the best "since" there is.
            self.status_since = Some(time);
            return;
        }
        let output = output.map(|text| match previous.and_then(|entry| entry.output.as_ref()) {
            Some(shared) if shared.as_ref() == text => shared.clone(),
            _ => Arc::from(text),
        });
        if self.entries.len() == self.capacity {
            if let Some(oldest) = self.entries.pop_front() {
                self.failed_in_window -= u32::from(oldest.status == HealthStatus::Fail);
            }
        }
        self.failed_in_window += u32::from(failed);
        let duration_micros = u32::try_from(duration.as_micros()).unwrap_or(u32::MAX);
        let value = value.unwrap_or(f64::NAN);
        self.entries.push_back(PastRun { time, value, output, duration_micros, status });
    }

    /// The most runs kept.
    pub fn capacity(&self) -> u32 {
        // At most MAX_HISTORY, from `new`.
        u32::try_from(self.capacity).unwrap_or(MAX_HISTORY)
    }

    /// The kept runs, oldest first.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &PastRun> {
        self.entries.iter()
    }

    pub fn uptime(&self) -> Uptime {
        Uptime {
            runs: u32::try_from(self.entries.len()).unwrap_or(u32::MAX),
            failed_runs: self.failed_in_window,
            runs_since_start: self.runs_since_start,
            failed_runs_since_start: self.failed_since_start,
        }
    }

    pub fn status_since(&self) -> Option<DateTime<Utc>> {
        self.status_since
    }

    /// The latest kept run's output, shared with the ring.
    pub fn latest_output(&self) -> Option<Arc<str>> {
        self.entries.back().and_then(|entry| entry.output.clone())
    }

    /// Puts back the counts a store remembered (after its runs were
    /// pushed back): runs and failures since the check was first
    /// recorded, and since when its status holds, when known.
    pub fn set_counts(&mut self, runs: u64, failed: u64, status_since: Option<DateTime<Utc>>) {
        self.runs_since_start = runs.max(self.entries.len() as u64);
        self.failed_since_start = failed.max(u64::from(self.failed_in_window));
        if status_since.is_some() {
            self.status_since = status_since;
        }
    }
}

/// A check's history, shared between its task (which pushes) and the
/// handlers (which read). Cloning it shares the same ring.
#[derive(Debug, Clone)]
pub struct SharedHistory(Arc<Mutex<History>>);

impl SharedHistory {
    pub fn new(capacity: u32) -> SharedHistory {
        SharedHistory(Arc::new(Mutex::new(History::new(capacity))))
    }

    /// Runs `f` on the history under its lock; keep it short.
    pub fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::{Fail, Pass, Warn};

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap()
    }

    fn push(history: &mut History, second: i64, status: HealthStatus, output: Option<&str>) {
        history.push(at(second), status, Some(second as f64), output, Duration::from_millis(3));
    }

    #[test]
    fn the_ring_keeps_the_last_runs_oldest_first() {
        let mut history = History::new(3);
        for second in 0..5 {
            push(&mut history, second, Pass, None);
        }
        let times: Vec<_> = history.entries().map(|entry| entry.time).collect();
        assert_eq!(times, [at(2), at(3), at(4)]);
        assert_eq!(history.entries().next().unwrap().value(), Some(2.0));
        assert_eq!(history.entries().next().unwrap().duration_micros, 3_000);
        assert_eq!(history.capacity(), 3);
        history.push(at(5), Fail, None, Some("HTTP 500"), Duration::ZERO);
        assert_eq!(history.entries().last().unwrap().value(), None);
    }

    #[test]
    fn uptime_counts_failures_in_the_window_and_since_start() {
        let mut history = History::new(4);
        assert_eq!(history.uptime().window(), None);
        assert_eq!(history.uptime().since_start(), None);
        // fail fail pass warn pass pass: the two failures leave the window.
        for (second, status) in [Fail, Fail, Pass, Warn, Pass, Pass].into_iter().enumerate() {
            push(&mut history, second as i64, status, None);
        }
        let uptime = history.uptime();
        assert_eq!((uptime.runs, uptime.failed_runs), (4, 0));
        assert_eq!((uptime.runs_since_start, uptime.failed_runs_since_start), (6, 2));
        assert_eq!(uptime.window(), Some(1.0));
        assert_eq!(uptime.since_start(), Some(4.0 / 6.0));
        push(&mut history, 6, Fail, Some("HTTP 500"));
        assert_eq!(history.uptime().failed_runs, 1);
        assert_eq!(history.uptime().window(), Some(0.75));
    }

    #[test]
    fn status_since_moves_only_when_the_status_changes() {
        let mut history = History::new(10);
        assert_eq!(history.status_since(), None);
        push(&mut history, 0, Pass, None);
        push(&mut history, 1, Pass, None);
        assert_eq!(history.status_since(), Some(at(0)));
        push(&mut history, 2, Fail, Some("connection refused"));
        push(&mut history, 3, Fail, Some("connection refused"));
        assert_eq!(history.status_since(), Some(at(2)));
        push(&mut history, 4, Pass, None);
        assert_eq!(history.status_since(), Some(at(4)));
    }

    #[test]
    fn the_same_output_twice_is_kept_once() {
        let mut history = History::new(10);
        push(&mut history, 0, Fail, Some("connection refused"));
        push(&mut history, 1, Fail, Some("connection refused"));
        push(&mut history, 2, Fail, Some("HTTP 500"));
        let outputs: Vec<_> =
            history.entries().map(|entry| entry.output.clone().unwrap()).collect();
        assert!(Arc::ptr_eq(&outputs[0], &outputs[1]));
        assert_eq!(outputs[2].as_ref(), "HTTP 500");
    }

    #[test]
    fn history_zero_keeps_nothing_but_counts_since_start() {
        let mut history = History::new(0);
        push(&mut history, 0, Fail, Some("HTTP 500"));
        push(&mut history, 1, Pass, None);
        assert_eq!(history.entries().len(), 0);
        let uptime = history.uptime();
        assert_eq!(
            (uptime.runs, uptime.runs_since_start, uptime.failed_runs_since_start),
            (0, 2, 1)
        );
        assert_eq!(uptime.window(), None);
        assert_eq!(uptime.since_start(), Some(0.5));
    }

    #[test]
    fn a_full_ring_does_not_grow() {
        let mut history = History::new(120);
        for second in 0..1000 {
            push(&mut history, second, if second % 7 == 0 { Fail } else { Pass }, None);
        }
        assert_eq!(history.entries.len(), 120);
        assert!(history.entries.capacity() < 2 * 120, "{}", history.entries.capacity());
        let failed = history.entries().filter(|entry| entry.status == Fail).count();
        assert_eq!(history.uptime().failed_runs as usize, failed);
    }

    /// The figure the README states for the memory of one kept run.
    #[test]
    fn an_entry_is_48_bytes() {
        assert_eq!(std::mem::size_of::<PastRun>(), 48);
    }
}
