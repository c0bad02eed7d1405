//! The store: each check's last runs, hourly and daily roll-ups and every
//! change of status, kept past a restart in a SQLite file (the embedded
//! default) or a PostgreSQL database (for fleets).
//!
//! The engine hands each finished run to `Store::sink`, which only puts it
//! on a bounded queue: a full, slow, frozen or failing store never slows a
//! check or a probe; what does not fit is dropped and counted. One writer
//! thread drains the queue in batches (one transaction each, at most
//! `BATCH_EVERY` apart, so `kill -9` loses at most that much), keeps the
//! current hour's and day's roll-ups in memory and adds them to the store
//! every `ROLLUP_EVERY`, and prunes past the retention in small steps.
//! A heartbeat's pings go the same way (`Store::save_pings`): the ping is
//! answered from memory, and what the pings said is written with the next
//! batch, so that a restart gives it back (`Store::pings`).

pub mod outbox;
mod postgresql;
pub mod report;
mod rollup;
mod sqlite;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use healthd_models::HealthStatus;

use crate::checks::util::categories::error_chain;
use crate::checks::{Outcome, PingState};
use crate::config::{StorageBackend, StorageSettings};
use crate::engine::state::{FinishedRun, Remembered, RunSink};
use crate::store::outbox::Outbox;

pub use rollup::Rollup;

/// Runs are written at most this long after they end.
pub const BATCH_EVERY: Duration = Duration::from_millis(250);
/// The in-memory roll-ups and totals are added to the store this often
/// (and at a clean stop); after a crash they are rebuilt from the runs
/// written since.
pub const ROLLUP_EVERY: Duration = Duration::from_secs(60);
/// Retention removes at most this many checks' old rows per step.
pub const PRUNE_CHECKS_PER_STEP: usize = 200;
/// How long a query may take before the caller is answered 503.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(5);

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening refused: the file or database is not one healthd can use.
    /// Nothing in it was changed.
    #[error("{0}")]
    Refused(String),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// With its causes: tokio-postgres says "error connecting to server"
    /// and keeps the why in its source. Its errors never hold the URL.
    #[error("PostgreSQL: {}", error_chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration: {0}")]
    Migration(#[from] refinery::Error),
    #[error("{0}")]
    Other(String),
}

/// A clock: the writer's "now" for retention, the queries' for windows.
/// Tests pass their own.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// Counts for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Runs put on the queue and not yet written.
    pub backlog: AtomicU64,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failed_writes: AtomicU64,
    /// The latest batch's write, in microseconds.
    pub last_write_micros: AtomicU64,
    /// Sum and count of batch writes, for a mean.
    pub write_micros_sum: AtomicU64,
    pub writes: AtomicU64,
    /// Writes that carried roll-ups: what the uptime answers read changes
    /// only with these (the status page's `ETag` holds this count).
    pub rollup_writes: AtomicU64,
    /// When the drop was last logged (seconds since the epoch).
    dropped_logged_at: AtomicU64,
}

/// What goes to the writer thread.
enum Command {
    Run(FinishedRun),
    /// What a heartbeat's pings said now, replacing what was saved.
    Pings(Arc<str>, PingState),
    /// Write everything held in memory now; answer when done.
    Flush(mpsc::SyncSender<()>),
    /// Prune every check now, step by step; answer when done.
    #[cfg(test)]
    Prune(mpsc::SyncSender<()>),
}

/// An open store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    queue: mpsc::SyncSender<Command>,
    stats: Arc<StoreStats>,
    reader: Box<dyn Reader>,
    instance: String,
    clock: Clock,
    writer: Mutex<Option<JoinHandle<()>>>,
    retention: Retention,
    outbox: Arc<dyn Outbox>,
}

/// How long each kind of row is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub hourly: Duration,
    pub daily: Duration,
    pub incidents: Duration,
}

/// The oldest rows retention keeps at a given time, for both backends'
/// prune.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cutoffs {
    /// Hourly roll-ups of earlier hours go.
    pub first_hour: i64,
    /// Daily roll-ups of earlier days go.
    pub first_day: i64,
    /// Ended incidents that ended before this (in microseconds) go.
    pub incidents_before: i64,
}

impl Retention {
    pub(crate) fn cutoffs(&self, now: DateTime<Utc>) -> Cutoffs {
        let seconds = |keep: Duration| now.timestamp() - i64::try_from(keep.as_secs()).unwrap_or(0);
        Cutoffs {
            first_hour: rollup::hour_of(seconds(self.hourly)),
            first_day: rollup::day_of(seconds(self.daily)),
            incidents_before: micros(now) - duration_micros(self.incidents),
        }
    }
}

/// One check's row, as the writer tracks it.
#[derive(Debug, Clone, Default)]
pub(crate) struct CheckRow {
    pub id: i64,
    pub keep: u32,
    /// The sequence number the next run gets.
    pub next_seq: i64,
    /// Runs up to this sequence number are in the roll-ups and totals.
    pub rolled_seq: i64,
    pub runs_total: u64,
    pub failed_total: u64,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub status: Option<HealthStatus>,
    pub status_since: Option<DateTime<Utc>>,
}

/// One kept run, as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRow {
    pub seq: i64,
    pub slot: i64,
    pub time: DateTime<Utc>,
    pub observed: HealthStatus,
    pub status: HealthStatus,
    pub value: Option<f64>,
    pub output: Option<String>,
    pub duration: Duration,
}

/// What is stored of one check.
#[derive(Debug, Clone)]
pub(crate) struct StoredCheck {
    pub name: String,
    pub row: CheckRow,
    pub runs: Vec<RunRow>,
    pub latest_incident: Option<IncidentRow>,
}

/// A change of status, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentRow {
    pub check: String,
    pub from: Option<HealthStatus>,
    pub to: HealthStatus,
    pub started: DateTime<Utc>,
    pub ended: Option<DateTime<Utc>>,
    pub output: Option<String>,
}

/// Which roll-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    Hourly,
    Daily,
}

impl Resolution {
    /// Its roll-up table (both backends name them alike).
    pub(crate) fn table(self) -> &'static str {
        match self {
            Resolution::Hourly => "hourly",
            Resolution::Daily => "daily",
        }
    }
}

/// One transaction's worth of writes.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub runs: Vec<(i64, RunRow)>,
    /// New changes of status; each ends the check's open one.
    pub incidents: Vec<(i64, IncidentRow)>,
    /// Roll-ups to add to what is stored for the same check and period.
    pub rollups: Vec<(Resolution, i64, i64, Rollup)>,
    /// Checks' totals and states, through `rolled_seq`.
    pub checks: Vec<CheckRow>,
    /// Heartbeats' ping states, the latest of each, by check name.
    pub pings: HashMap<Arc<str>, PingState>,
    /// Whose pings (the other rows hang off check ids).
    pub instance: String,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.incidents.is_empty()
            && self.rollups.is_empty()
            && self.checks.is_empty()
            && self.pings.is_empty()
    }
}

/// The writer thread's side of a backend.
pub(crate) trait Backend: Send {
    /// The check's row, made when it is new; its `keep` set.
    fn check(&mut self, instance: &str, name: &str, keep: u32) -> Result<CheckRow, StoreError>;
    /// The kept runs of a check whose sequence number is above `after`, oldest first.
    fn runs_after(&mut self, check_id: i64, after: i64) -> Result<Vec<RunRow>, StoreError>;
    /// Writes a batch in one transaction.
    fn write(&mut self, batch: &Batch) -> Result<(), StoreError>;
    /// Removes rows older than the cutoffs for these checks; answers how many.
    fn prune(&mut self, check_ids: &[i64], cutoffs: Cutoffs) -> Result<u64, StoreError>;
    /// Every check id of the instance.
    fn check_ids(&mut self, instance: &str) -> Result<Vec<i64>, StoreError>;
    /// After writes kept failing: drops the connection and opens a new one
    /// (a file on a disk that was mounted again is another file), keeping
    /// the old one when that fails; answers whether it did. Backends whose
    /// connections come from a pool that replaces broken ones do nothing.
    fn reopen(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// The queries' side of a backend: safe to call from any thread, one
/// query at a time per connection.
pub(crate) trait Reader: Send + Sync {
    /// Each check of the instance: its row, its kept runs (oldest first)
    /// and its latest incident.
    fn remembered(&self, instance: &str) -> Result<Vec<StoredCheck>, StoreError>;
    /// Each named check's roll-ups from `first_period` on, summed per check
    /// (a check with none is absent).
    fn rollup_sums(
        &self,
        instance: &str,
        names: &[&str],
        resolution: Resolution,
        first_period: i64,
    ) -> Result<HashMap<String, Rollup>, StoreError>;
    /// One check's roll-ups in `[first, last]`, oldest first.
    fn rollups(
        &self,
        instance: &str,
        name: &str,
        resolution: Resolution,
        first: i64,
        last: i64,
    ) -> Result<Vec<(i64, Rollup)>, StoreError>;
    /// One check's kept runs in `[from, to]`, oldest first.
    fn runs_between(
        &self,
        instance: &str,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RunRow>, StoreError>;
    /// The oldest kept run's time.
    fn oldest_run(&self, instance: &str, name: &str) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Incidents, newest first: of one check, or of any of `names`.
    fn incidents(
        &self,
        instance: &str,
        names: &[&str],
        limit: u32,
    ) -> Result<Vec<IncidentRow>, StoreError>;
    /// What each heartbeat's pings said, by check name.
    fn pings(&self, instance: &str) -> Result<HashMap<String, PingState>, StoreError>;
}

impl Store {
    /// Opens (creating when missing) and migrates the store, and starts its
    /// writer. Refuses, changing nothing, a file that is not a healthd
    /// store or one written by a newer healthd.
    pub fn open(settings: &StorageSettings) -> Result<Store, StoreError> {
        Store::open_with_clock(settings, system_clock())
    }

    pub fn open_with_clock(settings: &StorageSettings, clock: Clock) -> Result<Store, StoreError> {
        type Opened = (Box<dyn Backend>, Box<dyn Reader>, Arc<dyn Outbox>);
        let (backend, reader, outbox): Opened = match &settings.backend {
            StorageBackend::Sqlite { path } => {
                let (backend, reader) = sqlite::open(path)?;
                let outbox =
                    outbox::SqliteOutbox::open(path, &settings.instance, reader.generation())?;
                (Box::new(backend), Box::new(reader), Arc::new(outbox))
            }
            StorageBackend::Postgres { url, ca_file } => {
                let (backend, reader) = postgresql::open(url, ca_file.as_deref())?;
                let outbox = reader.outbox(&settings.instance);
                (Box::new(backend), Box::new(reader), Arc::new(outbox))
            }
        };
        let retention = Retention {
            hourly: settings.hourly_retention,
            daily: settings.daily_retention,
            incidents: settings.incident_retention,
        };
        let (queue, receiver) = mpsc::sync_channel(settings.queue);
        let stats = Arc::new(StoreStats::default());
        let writer = writer::Writer::new(
            backend,
            settings.instance.clone(),
            retention,
            clock.clone(),
            stats.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("healthd-store".into())
            .spawn(move || writer.run(receiver))
            .map_err(|error| StoreError::Other(format!("cannot start the writer: {error}")))?;
        Ok(Store {
            shared: Arc::new(Shared {
                queue,
                stats,
                reader,
                instance: settings.instance.clone(),
                clock,
                writer: Mutex::new(Some(handle)),
                retention,
                outbox,
            }),
        })
    }

    /// What the store remembers of each check, by name.
    pub fn remembered(&self) -> Result<HashMap<String, Remembered>, StoreError> {
        let stored = self.shared.reader.remembered(&self.shared.instance)?;
        Ok(stored.into_iter().map(|check| (check.name.clone(), writer::remember(check))).collect())
    }

    /// What each heartbeat's pings said before the restart, by check name.
    pub fn pings(&self) -> Result<HashMap<String, PingState>, StoreError> {
        self.shared.reader.pings(&self.shared.instance)
    }

    /// The engine's side: queues each finished run.
    pub fn sink(&self) -> Arc<dyn RunSink> {
        Arc::new(Sink { queue: self.shared.queue.clone(), stats: self.shared.stats.clone() })
    }

    /// Queues what `check`'s pings say now, never waiting: a ping is
    /// answered from memory, and when the queue is full this is dropped
    /// and counted like a run (the next ping saves the state whole again).
    pub fn save_pings(&self, check: &Arc<str>, state: PingState) {
        offer(&self.shared.queue, &self.shared.stats, Command::Pings(check.clone(), state));
    }

    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    pub fn retention(&self) -> Retention {
        self.shared.retention
    }

    /// Writes what the writer holds (queued runs, roll-ups, totals) and
    /// waits for it, at most `within`; false when it did not finish.
    pub fn flush(&self, within: Duration) -> bool {
        let (done, finished) = mpsc::sync_channel(1);
        if self.shared.queue.send(Command::Flush(done)).is_err() {
            return false;
        }
        finished.recv_timeout(within).is_ok()
    }

    /// Queues a run, waiting for room: for seeding a store in tests and
    /// the bench, where dropping is not wanted.
    #[cfg(test)]
    pub fn record_waiting(&self, run: FinishedRun) {
        self.shared.stats.backlog.fetch_add(1, Ordering::Relaxed);
        let _ = self.shared.queue.send(Command::Run(run));
    }

    #[cfg(test)]
    /// Removes what is past its retention for every check now (the
    /// writer does it by itself, a few checks every few seconds), and
    /// waits for it, at most `within`.
    pub fn prune(&self, within: Duration) -> bool {
        let (done, finished) = mpsc::sync_channel(1);
        if self.shared.queue.send(Command::Prune(done)).is_err() {
            return false;
        }
        finished.recv_timeout(within).is_ok()
    }

    /// Flushes, and lets the writer end once every handle is gone.
    pub fn close(&self, within: Duration) -> bool {
        let flushed = self.flush(within);
        if let Some(handle) = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // The writer ends when the last queue sender is dropped; it is
            // not waited for here (a frozen store must not hold the exit).
            drop(handle);
        }
        flushed
    }

    /// The notifications' outbox and the alerts' state.
    pub fn outbox(&self) -> Arc<dyn Outbox> {
        self.shared.outbox.clone()
    }

    pub(crate) fn reader(&self) -> &dyn Reader {
        self.shared.reader.as_ref()
    }

    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.shared.clock)()
    }
}

struct Sink {
    queue: mpsc::SyncSender<Command>,
    stats: Arc<StoreStats>,
}

impl RunSink for Sink {
    fn finished(&self, run: FinishedRun) {
        offer(&self.queue, &self.stats, Command::Run(run));
    }
}

/// Puts a command on the queue without waiting; what does not fit is
/// dropped and counted.
fn offer(queue: &mpsc::SyncSender<Command>, stats: &StoreStats, command: Command) {
    let is_run = matches!(command, Command::Run(_));
    match queue.try_send(command) {
        Ok(()) => {
            if is_run {
                stats.backlog.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(mpsc::TrySendError::Full(_) | mpsc::TrySendError::Disconnected(_)) => {
            let dropped = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
            let logged = stats.dropped_logged_at.load(Ordering::Relaxed);
            // At most one line a minute, whoever drops.
            if now >= logged + 60
                && stats
                    .dropped_logged_at
                    .compare_exchange(logged, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    dropped_total = dropped,
                    "the store's queue is full: runs are dropped (the store is slow, full or down)"
                );
            }
        }
    }
}

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;

pub(crate) fn status_code(status: HealthStatus) -> i64 {
    match status {
        HealthStatus::Pass => 0,
        HealthStatus::Warn => 1,
        HealthStatus::Fail => 2,
    }
}

pub(crate) fn status_from_code(code: i64) -> HealthStatus {
    match code {
        0 => HealthStatus::Pass,
        1 => HealthStatus::Warn,
        _ => HealthStatus::Fail,
    }
}

/// The newest schema version among migrations named `V<n>__<name>`.
pub(crate) fn newest_version(migrations: &[(&str, &str)]) -> i64 {
    migrations
        .iter()
        .filter_map(|(name, _)| name.strip_prefix('V')?.split("__").next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// A ping state's outcome as stored: `success`, `fail`, or `exit` with
/// its status.
pub(crate) fn outcome_columns(outcome: Option<Outcome>) -> (Option<&'static str>, Option<i64>) {
    match outcome {
        None => (None, None),
        Some(Outcome::Success) => (Some("success"), None),
        Some(Outcome::Fail) => (Some("fail"), None),
        Some(Outcome::Exit(status)) => (Some("exit"), Some(i64::from(status))),
    }
}

pub(crate) fn outcome_from_columns(outcome: Option<&str>, status: Option<i64>) -> Option<Outcome> {
    match (outcome?, status.and_then(|status| u8::try_from(status).ok())) {
        ("success", _) | ("exit", Some(0)) => Some(Outcome::Success),
        ("exit", Some(status)) => Some(Outcome::Exit(status)),
        _ => Some(Outcome::Fail),
    }
}

pub(crate) fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

pub(crate) fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// A roll-up's histogram columns, as both backends' migrations make them.
pub(crate) const BUCKET_COLUMNS: &str = "b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11";

pub(crate) fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// A count read back from a signed column (never negative when healthd
/// wrote it).
pub(crate) fn as_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn as_u32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

pub(crate) fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
