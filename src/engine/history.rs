//! Per-check history: the last `history` runs of a check in a fixed ring
//! (time, status after thresholds, main value, output, duration), and its
//! uptime over those runs and since start. Recording a run is O(1): one
//! entry in, at most one out, two counters adjusted; nothing here depends
//! on how many checks there are or how many runs are kept.
//!
//! A check's task is the only writer; `/health/checks/{name}/history`
//! reads a copy under the same short lock, so a ring is shared (`Arc`)
//! rather than copied with the check's state into every snapshot.
//!
//! An entry is 24 bytes, since the rings are most of what healthd holds
//! (10,000 checks keeping 120 runs each are 1.2 million entries): the time
//! as nanoseconds, the output as an index into the ring's own table of
//! texts, which a streak of runs saying the same thing shares.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use healthd_models::HealthStatus;

use crate::base::policy::MAX_HISTORY;

/// One kept run, as `History::entries` reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PastRun<'a> {
    /// When the run ended.
    pub time: DateTime<Utc>,
    /// After thresholds.
    pub status: HealthStatus,
    /// The main measurement's value, when the run took it.
    pub value: Option<f64>,
    pub output: Option<&'a str>,
    /// Whole microseconds, at most about 71 minutes (a run is bounded by
    /// its interval, and `check-config` refuses intervals that long with
    /// a run that long).
    pub duration: Duration,
}

/// One run as the ring stores it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Since the Unix epoch; times outside 1677 to 2262 are held at the
    /// nearest end.
    time_nanos: i64,
    /// NaN when the run did not take it (half the size of an `Option<f64>`).
    value: f64,
    duration_micros: u32,
    /// Where the output is in `History::outputs`, or `NO_OUTPUT`.
    output: u16,
    status: HealthStatus,
}

const NO_OUTPUT: u16 = u16::MAX;

// A table slot per kept run at most, so every index fits below NO_OUTPUT.
const _: () = assert!(MAX_HISTORY < NO_OUTPUT as u32);

/// A text some kept runs said, and how many of them.
#[derive(Debug)]
struct Output {
    text: Box<str>,
    /// 0: the slot is free (listed in `History::free`).
    entries: u16,
}

/// The ring and the uptime counters of one check.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    entries: VecDeque<Entry>,
    /// The outputs `entries` refer to; never more slots than entries.
    outputs: Vec<Output>,
    /// Slots of `outputs` no entry refers to, taken before the table grows.
    free: Vec<u16>,
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
            outputs: Vec::new(),
            free: Vec::new(),
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
        let previous = self.entries.back().copied();
        if self.status_since.is_none() || previous.is_some_and(|entry| entry.status != status) {
            self.status_since = Some(time);
        }
        if self.capacity == 0 {
            // Without entries a change of status cannot be seen: the
            // latest run's time is the best "since" there is.
            self.status_since = Some(time);
            return;
        }
        // Taken before the oldest entry leaves: with room for one run, the
        // entry to share with is the one leaving.
        let output = match output {
            None => NO_OUTPUT,
            Some(text) => match previous.map(|entry| entry.output) {
                Some(index)
                    if index != NO_OUTPUT && *self.outputs[usize::from(index)].text == *text =>
                {
                    self.outputs[usize::from(index)].entries += 1;
                    index
                }
                _ => self.store_output(text),
            },
        };
        if self.entries.len() == self.capacity {
            if let Some(oldest) = self.entries.pop_front() {
                self.failed_in_window -= u32::from(oldest.status == HealthStatus::Fail);
                self.release_output(oldest.output);
            }
        }
        self.failed_in_window += u32::from(failed);
        self.entries.push_back(Entry {
            time_nanos: time.timestamp_nanos_opt().unwrap_or(if time.timestamp() < 0 {
                i64::MIN
            } else {
                i64::MAX
            }),
            value: value.unwrap_or(f64::NAN),
            duration_micros: u32::try_from(duration.as_micros()).unwrap_or(u32::MAX),
            output,
            status,
        });
    }

    /// A new slot holding `text`, referred to by one entry.
    fn store_output(&mut self, text: &str) -> u16 {
        let output = Output { text: text.into(), entries: 1 };
        match self.free.pop() {
            Some(index) => {
                self.outputs[usize::from(index)] = output;
                index
            }
            None => {
                self.outputs.push(output);
                // Below NO_OUTPUT: a slot per kept entry at most.
                u16::try_from(self.outputs.len() - 1).unwrap_or(NO_OUTPUT)
            }
        }
    }

    /// One entry referring to slot `index` has left.
    fn release_output(&mut self, index: u16) {
        let Some(output) = self.outputs.get_mut(usize::from(index)) else { return };
        output.entries -= 1;
        if output.entries == 0 {
            output.text = Box::default();
            self.free.push(index);
        }
    }

    fn read(&self, entry: &Entry) -> PastRun<'_> {
        PastRun {
            time: DateTime::from_timestamp_nanos(entry.time_nanos),
            status: entry.status,
            value: (!entry.value.is_nan()).then_some(entry.value),
            output: self.outputs.get(usize::from(entry.output)).map(|output| &*output.text),
            duration: Duration::from_micros(u64::from(entry.duration_micros)),
        }
    }

    /// The most runs kept.
    pub fn capacity(&self) -> u32 {
        // At most MAX_HISTORY, from `new`.
        u32::try_from(self.capacity).unwrap_or(MAX_HISTORY)
    }

    /// The kept runs, oldest first.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = PastRun<'_>> {
        self.entries.iter().map(|entry| self.read(entry))
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
        assert_eq!(history.entries().next().unwrap().value, Some(2.0));
        assert_eq!(history.entries().next().unwrap().duration, Duration::from_millis(3));
        assert_eq!(history.capacity(), 3);
        history.push(at(5), Fail, None, Some("HTTP 500"), Duration::ZERO);
        let last = history.entries().last().unwrap();
        assert_eq!((last.value, last.output, last.status), (None, Some("HTTP 500"), Fail));
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
        push(&mut history, 3, Pass, None);
        let outputs: Vec<_> = history.entries().map(|entry| entry.output).collect();
        assert_eq!(
            outputs,
            [Some("connection refused"), Some("connection refused"), Some("HTTP 500"), None]
        );
        assert_eq!(history.outputs.len(), 2);
    }

    #[test]
    fn outputs_that_left_the_ring_free_their_room() {
        let mut history = History::new(2);
        for second in 0..1000 {
            let output = format!("HTTP {}", 500 + second % 3);
            push(&mut history, second, Fail, Some(&output));
        }
        // Two kept runs refer to two texts; a third slot is the one freed
        // by the run that left before the newest came in.
        assert!(history.outputs.len() <= 3, "{}", history.outputs.len());
        let outputs: Vec<_> = history.entries().map(|entry| entry.output.unwrap()).collect();
        assert_eq!(outputs, ["HTTP 502", "HTTP 500"]);
        let referred: u32 = history.outputs.iter().map(|output| u32::from(output.entries)).sum();
        assert_eq!(referred, 2);
    }

    #[test]
    fn a_ring_of_one_shares_the_output_of_the_run_it_replaces() {
        let mut history = History::new(1);
        push(&mut history, 0, Fail, Some("connection refused"));
        push(&mut history, 1, Fail, Some("connection refused"));
        push(&mut history, 2, Fail, Some("connection refused"));
        assert_eq!(history.entries().next().unwrap().output, Some("connection refused"));
        assert_eq!(history.outputs.len(), 1);
        assert_eq!(history.outputs[0].entries, 1);
    }

    #[test]
    fn times_keep_their_nanoseconds_and_far_ones_are_held_at_the_ends() {
        let mut history = History::new(3);
        let precise = DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap();
        let far = DateTime::from_timestamp(20_000_000_000, 0).unwrap();
        let early = DateTime::from_timestamp(-20_000_000_000, 0).unwrap();
        for time in [precise, far, early] {
            history.push(time, Pass, None, None, Duration::ZERO);
        }
        let times: Vec<_> = history.entries().map(|entry| entry.time).collect();
        assert_eq!(times[0], precise);
        assert_eq!(times[1], DateTime::from_timestamp_nanos(i64::MAX));
        assert_eq!(times[2], DateTime::from_timestamp_nanos(i64::MIN));
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
    fn an_entry_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }
}
