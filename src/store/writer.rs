//! The writer thread: drains the queue of finished runs into batches, one
//! transaction each; keeps each check's current hour and day in memory;
//! prunes in small steps. It alone writes, so it alone numbers runs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use healthd_models::HealthStatus;

use crate::engine::state::{FinishedRun, Remembered, RememberedRun};
use crate::store::rollup::{day_of, hour_of, Rollup};
use crate::store::{
    Backend, Batch, CheckRow, Clock, Command, IncidentRow, Resolution, Retention, RunRow,
    StoreError, StoreStats, StoredCheck, BATCH_EVERY, PRUNE_CHECKS_PER_STEP, ROLLUP_EVERY,
};

/// The most runs taken into one batch.
const MAX_BATCH: usize = 20_000;
/// While writes fail, they are tried again after this long at first, and
/// at most this long later on.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MOST: Duration = Duration::from_secs(30);
/// A pruning step this often.
const PRUNE_EVERY: Duration = Duration::from_secs(5);
/// From this many failed writes in a row on (about 1.5 s of retries),
/// each failed write has the backend open a new connection: one to a file
/// whose disk went read-only and was mounted again stays broken.
const REOPEN_AFTER: u32 = 3;

pub(crate) struct Writer {
    backend: Box<dyn Backend>,
    instance: String,
    retention: Retention,
    clock: Clock,
    stats: Arc<StoreStats>,
    checks: HashMap<Arc<str>, Tracked>,
    /// What the next transaction writes; kept while writes fail.
    pending: Batch,
    pending_runs: u64,
    /// Flush requests answered once `pending` is written.
    waiting: Vec<mpsc::SyncSender<()>>,
    rolled_at: Instant,
    pruned_at: Instant,
    prune_queue: Vec<i64>,
    retry_at: Option<(Instant, Duration)>,
    /// Writes that failed since the last one that did not.
    failed_in_a_row: u32,
    /// Whether the store was opened again since the last write that did not fail.
    reopened: bool,
}

/// A check the writer has seen since it started.
struct Tracked {
    row: CheckRow,
    hour: (i64, Rollup),
    day: (i64, Rollup),
    /// Runs taken since its row and roll-ups were last added to a batch.
    dirty: bool,
}

impl Writer {
    pub fn new(
        backend: Box<dyn Backend>,
        instance: String,
        retention: Retention,
        clock: Clock,
        stats: Arc<StoreStats>,
    ) -> Writer {
        let now = Instant::now();
        Writer {
            pending: Batch { instance: instance.clone(), ..Batch::default() },
            backend,
            instance,
            retention,
            clock,
            stats,
            checks: HashMap::new(),
            pending_runs: 0,
            waiting: Vec::new(),
            rolled_at: now,
            pruned_at: now,
            prune_queue: Vec::new(),
            retry_at: None,
            failed_in_a_row: 0,
            reopened: false,
        }
    }

    pub fn run(mut self, receiver: mpsc::Receiver<Command>) {
        loop {
            let batch_by = Instant::now() + BATCH_EVERY;
            let mut open = true;
            let mut taken = 0;
            // While a write keeps failing, leave the runs on the queue:
            // it fills, and what does not fit is dropped and counted.
            let holding = self.pending_runs >= MAX_BATCH as u64;
            while open && !holding && taken < MAX_BATCH {
                let wait = batch_by.saturating_duration_since(Instant::now());
                match receiver.recv_timeout(wait) {
                    Ok(Command::Run(run)) => {
                        self.stats.backlog.fetch_sub(1, Ordering::Relaxed);
                        self.take(run);
                        taken += 1;
                    }
                    Ok(Command::Pings(check, state)) => {
                        // Only the latest counts: it holds all the pings said.
                        self.pending.pings.insert(check, state);
                    }
                    Ok(Command::Flush(done)) => {
                        self.roll_all();
                        self.waiting.push(done);
                        break;
                    }
                    #[cfg(test)]
                    Ok(Command::Prune(done)) => {
                        self.prune_queue.clear();
                        self.prune_step();
                        while !self.prune_queue.is_empty() {
                            self.prune_step();
                        }
                        let _ = done.try_send(());
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
                }
            }
            if holding {
                std::thread::sleep(BATCH_EVERY);
            }
            if self.rolled_at.elapsed() >= ROLLUP_EVERY || !open {
                self.roll_all();
                self.rolled_at = Instant::now();
            }
            self.write_pending();
            if self.pruned_at.elapsed() >= PRUNE_EVERY {
                self.prune_step();
                self.pruned_at = Instant::now();
            }
            if !open {
                return;
            }
        }
    }

    fn take(&mut self, run: FinishedRun) {
        if let Err(error) = self.track(&run.check, run.keep) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(check = %run.check, %error, "the store cannot take the check's run");
            return;
        }
        let Writer { checks, pending, .. } = self;
        let tracked = checks.get_mut(&run.check).expect("tracked above");
        let id = tracked.row.id;
        let seq = tracked.row.next_seq;
        tracked.row.next_seq += 1;
        let row = RunRow {
            seq,
            slot: if run.keep == 0 { -1 } else { seq % i64::from(run.keep) },
            time: run.time,
            observed: run.observed,
            status: run.status,
            value: run.value,
            output: run.output.as_deref().map(str::to_string),
            duration: run.duration,
        };
        let changed = match run.previous {
            Some(previous) => previous != run.status,
            None => tracked.row.status.is_none() && run.status != HealthStatus::Pass,
        };
        if changed {
            pending.incidents.push((
                id,
                IncidentRow {
                    check: run.check.to_string(),
                    from: run.previous,
                    to: run.status,
                    started: run.time,
                    ended: None,
                    output: row.output.clone(),
                },
            ));
        }
        // A new period: what the old one holds goes out with the row, as
        // of the run before this one.
        enter_period(tracked, pending, &row);
        let duration_ms = count_run(&mut tracked.row, &row, changed);
        tracked.hour.1.add_run(run.status, duration_ms);
        tracked.day.1.add_run(run.status, duration_ms);
        tracked.dirty = true;
        if run.keep > 0 {
            pending.runs.push((id, row));
        }
        self.pending_runs += 1;
    }

    /// Makes sure the writer tracks the check with this `history`.
    fn track(&mut self, check: &Arc<str>, keep: u32) -> Result<(), StoreError> {
        let known = self.checks.get(check).is_some_and(|tracked| tracked.row.keep == keep);
        if !known {
            let mut row = self.backend.check(&self.instance, check, keep)?;
            if let Some(previous) = self.checks.remove(check) {
                // Its `history` changed: what it had in memory goes out now.
                let mut previous = previous;
                let rolled = previous.row.next_seq - 1;
                roll_into(&mut previous, &mut self.pending, rolled);
                row = CheckRow { keep, ..previous.row };
            }
            let mut tracked = Tracked {
                row,
                hour: (i64::MIN, Rollup::default()),
                day: (i64::MIN, Rollup::default()),
                dirty: false,
            };
            // Runs written but not yet in the roll-ups (healthd was killed
            // since): counted again into this period's sums.
            let unrolled = self.backend.runs_after(tracked.row.id, tracked.row.rolled_seq)?;
            for run in &unrolled {
                enter_period(&mut tracked, &mut self.pending, run);
                let duration_ms = count_run(&mut tracked.row, run, false);
                tracked.hour.1.add_run(run.status, duration_ms);
                tracked.day.1.add_run(run.status, duration_ms);
                tracked.dirty = true;
            }
            if let Some(last) = unrolled.last() {
                tracked.row.next_seq = tracked.row.next_seq.max(last.seq + 1);
            }
            self.checks.insert(check.clone(), tracked);
        }
        Ok(())
    }

    /// Every check's roll-ups and row go into the next batch.
    fn roll_all(&mut self) {
        for tracked in self.checks.values_mut().filter(|tracked| tracked.dirty) {
            roll_into(tracked, &mut self.pending, tracked.row.next_seq - 1);
        }
    }

    fn write_pending(&mut self) {
        if let Some((at, _)) = self.retry_at {
            if Instant::now() < at {
                return;
            }
        }
        if self.pending.is_empty() {
            self.answer_flushes();
            return;
        }
        let began = Instant::now();
        match self.backend.write(&self.pending) {
            Ok(()) => {
                let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.stats.last_write_micros.store(micros, Ordering::Relaxed);
                self.stats.write_micros_sum.fetch_add(micros, Ordering::Relaxed);
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
                self.stats.written.fetch_add(self.pending_runs, Ordering::Relaxed);
                if !self.pending.rollups.is_empty() {
                    self.stats.rollup_writes.fetch_add(1, Ordering::Relaxed);
                }
                if self.retry_at.take().is_some() {
                    tracing::info!("the store takes writes again");
                }
                self.failed_in_a_row = 0;
                self.reopened = false;
                self.pending = Batch { instance: self.instance.clone(), ..Batch::default() };
                self.pending_runs = 0;
                self.answer_flushes();
            }
            Err(error) => {
                self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                let wait = match self.retry_at {
                    None => {
                        tracing::warn!(%error, "the store cannot write: retrying; runs stay queued until it can");
                        RETRY_FIRST
                    }
                    Some((_, wait)) => (wait * 2).min(RETRY_MOST),
                };
                self.retry_at = Some((Instant::now() + wait, wait));
                self.failed_in_a_row += 1;
                if self.failed_in_a_row >= REOPEN_AFTER {
                    self.reopen();
                }
            }
        }
    }

    /// Opens the store again after writes kept failing.
    fn reopen(&mut self) {
        match self.backend.reopen() {
            // The first time it works, the new connection is tried at
            // once; later times keep the backoff (a store that stays
            // locked or full must not be retried in a loop).
            Ok(false) => {}
            Ok(true) if !self.reopened => {
                self.reopened = true;
                tracing::info!(
                    failed_writes = self.failed_in_a_row,
                    "the store kept failing to write: opened it again"
                );
                if let Some((_, wait)) = self.retry_at {
                    self.retry_at = Some((Instant::now(), wait));
                }
            }
            Ok(true) => {
                tracing::debug!(failed_writes = self.failed_in_a_row, "opened the store again")
            }
            Err(error) => tracing::debug!(%error, "the store cannot be opened again"),
        }
    }

    fn answer_flushes(&mut self) {
        for done in self.waiting.drain(..) {
            let _ = done.try_send(());
        }
    }

    fn prune_step(&mut self) {
        if self.retry_at.is_some() {
            return;
        }
        if self.prune_queue.is_empty() {
            match self.backend.check_ids(&self.instance) {
                Ok(ids) => self.prune_queue = ids,
                Err(error) => {
                    tracing::debug!(%error, "the store cannot list checks to prune");
                    return;
                }
            }
        }
        let from = self.prune_queue.len().saturating_sub(PRUNE_CHECKS_PER_STEP);
        let step: Vec<i64> = self.prune_queue.drain(from..).collect();
        let cutoffs = self.retention.cutoffs((self.clock)());
        if let Err(error) = self.backend.prune(&step, cutoffs) {
            tracing::debug!(%error, "the store cannot prune");
        }
    }
}

/// Adds a run to a check's totals, consecutive counts and status; answers
/// its duration in milliseconds.
fn count_run(row: &mut CheckRow, run: &RunRow, changed: bool) -> f64 {
    row.runs_total += 1;
    row.failed_total += u64::from(run.status == HealthStatus::Fail);
    if run.observed == HealthStatus::Fail {
        row.consecutive_failures += 1;
        row.consecutive_successes = 0;
    } else {
        row.consecutive_successes += 1;
        row.consecutive_failures = 0;
    }
    if changed || row.status != Some(run.status) {
        row.status_since = Some(run.time);
    }
    row.status = Some(run.status);
    run.duration.as_secs_f64() * 1e3
}

/// Before `run` is counted: when it falls in another hour or day than the
/// check's sums, they go into the batch (as of the run before) and start
/// again.
fn enter_period(tracked: &mut Tracked, batch: &mut Batch, run: &RunRow) {
    let seconds = run.time.timestamp();
    let (hour, day) = (hour_of(seconds), day_of(seconds));
    if tracked.hour.0 != hour || tracked.day.0 != day {
        roll_into(tracked, batch, run.seq - 1);
        tracked.hour = (hour, Rollup::default());
        tracked.day = (day, Rollup::default());
    }
}

/// A check's roll-ups and row, as of run `rolled_seq`, into the batch.
fn roll_into(tracked: &mut Tracked, batch: &mut Batch, rolled_seq: i64) {
    let id = tracked.row.id;
    for (resolution, (period, rollup)) in
        [(Resolution::Hourly, &mut tracked.hour), (Resolution::Daily, &mut tracked.day)]
    {
        if rollup.runs > 0 {
            batch.rollups.push((resolution, id, *period, *rollup));
            *rollup = Rollup::default();
        }
    }
    tracked.row.rolled_seq = rolled_seq.max(tracked.row.rolled_seq);
    batch.checks.push(tracked.row.clone());
    tracked.dirty = false;
}

/// What a stored check gives back to the engine: the runs written since
/// its row was last added count into its totals as the writer counts them.
pub(crate) fn remember(check: StoredCheck) -> Remembered {
    let mut row = check.row;
    let rolled = row.rolled_seq;
    for run in check.runs.iter().filter(|run| run.seq > rolled) {
        count_run(&mut row, run, false);
    }
    let status = row.status.map(|status| {
        let since = check
            .latest_incident
            .as_ref()
            .filter(|incident| incident.to == status && incident.ended.is_none())
            .map(|incident| incident.started)
            .or(row.status_since)
            .or_else(|| check.runs.first().map(|run| run.time))
            .unwrap_or_default();
        (status, since)
    });
    Remembered {
        runs: check
            .runs
            .into_iter()
            .map(|run| RememberedRun {
                time: run.time,
                status: run.status,
                value: run.value,
                output: run.output,
                duration: run.duration,
            })
            .collect(),
        status,
        consecutive_failures: row.consecutive_failures,
        consecutive_successes: row.consecutive_successes,
        runs_total: row.runs_total,
        failed_runs_total: row.failed_total,
    }
}
