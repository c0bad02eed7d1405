//! The SQLite store: one file, WAL, one writing connection (the writer
//! thread's) and a few reading ones, so that queries never wait for a
//! write. After writes keep failing the writer opens the file again (a
//! disk that went read-only and was mounted again holds another file at
//! the same path), and the readers and the outbox follow it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use refinery::Migration;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, Row};

use crate::checks::PingState;
use crate::store::rollup::Rollup;
use crate::store::{
    as_i64, as_u32, as_u64, duration_micros, from_micros, micros, newest_version, outcome_columns,
    outcome_from_columns, status_code, status_from_code, Backend, Batch, CheckRow, Cutoffs,
    IncidentRow, Reader, Resolution, RunRow, StoreError, StoredCheck, BUCKET_COLUMNS,
};

/// `PRAGMA application_id` of a healthd store ("hlth"): a file with
/// another is refused, so that healthd never writes into someone else's
/// database.
pub const APPLICATION_ID: i64 = 0x686c_7468;
const MIGRATION_TABLE: &str = "healthd_migrations";
/// The schema versions this healthd knows, oldest first.
const MIGRATIONS: &[(&str, &str)] = &[
    ("V1__store", include_str!("sqlite/V1__store.sql")),
    ("V3__alerts", include_str!("sqlite/V3__alerts.sql")),
    ("V4__pings", include_str!("sqlite/V4__pings.sql")),
];
/// Reading connections: queries run on them while the writer writes.
const READERS: usize = 2;
/// How long a statement waits for a lock held by another connection.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteWriter {
    connection: Connection,
    path: PathBuf,
    opened: Arc<Generation>,
}

pub struct SqliteReader {
    connections: Vec<Mutex<Opened>>,
    path: PathBuf,
    opened: Arc<Generation>,
}

/// How many times the writer has opened the file again: a connection
/// opened before the latest time is opened again before its next use.
#[derive(Debug, Default)]
pub struct Generation(AtomicU64);

impl Generation {
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A connection and the generation it was opened in.
pub(crate) struct Opened {
    pub generation: u64,
    pub connection: Connection,
}

/// Opens the file (creating it when missing), refuses one that is not a
/// healthd store or whose schema is newer, and migrates it.
pub fn open(path: &Path) -> Result<(SqliteWriter, SqliteReader), StoreError> {
    let connection = open_writing(path)?;
    let connections = (0..READERS)
        .map(|_| Ok(Mutex::new(Opened { generation: 0, connection: open_reading(path)? })))
        .collect::<Result<Vec<_>, rusqlite::Error>>()?;
    let opened = Arc::new(Generation::default());
    let path = path.to_path_buf();
    Ok((
        SqliteWriter { connection, path: path.clone(), opened: opened.clone() },
        SqliteReader { connections, path, opened },
    ))
}

/// The writer's connection: inspected, in WAL mode, migrated.
fn open_writing(path: &Path) -> Result<Connection, StoreError> {
    let shown = path.display();
    inspect(path).map_err(|reason| StoreError::Refused(format!("{shown}: {reason}")))?;
    let mut connection = Connection::open(path)
        .map_err(|error| StoreError::Refused(format!("{shown}: cannot open: {error}")))?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // SQLite opens a file it cannot write read-only, silently.
    if connection.is_readonly(rusqlite::MAIN_DB)? {
        return Err(StoreError::Refused(format!("{shown}: cannot write to it (read-only)")));
    }
    let journal: String =
        connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Refused(format!(
            "{shown}: cannot use WAL (journal mode {journal})"
        )));
    }
    // WAL with NORMAL: a crash of healthd loses no committed batch, and a
    // crash of the machine at most the last ones; the file is never corrupt.
    connection.execute_batch("PRAGMA synchronous = NORMAL;")?;
    // Set once: opening the store again writes nothing it need not.
    let application_id: i64 =
        connection.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    if application_id != APPLICATION_ID {
        connection.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID};"))?;
    }
    let migrations = MIGRATIONS
        .iter()
        .map(|(name, sql)| Migration::unapplied(name, sql))
        .collect::<Result<Vec<_>, _>>()?;
    let mut runner = refinery::Runner::new(&migrations).set_abort_missing(true);
    runner.set_migration_table_name(MIGRATION_TABLE);
    runner.run(&mut connection)?;
    Ok(connection)
}

fn open_reading(path: &Path) -> rusqlite::Result<Connection> {
    let reader = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    reader.busy_timeout(BUSY_TIMEOUT)?;
    Ok(reader)
}

impl SqliteReader {
    /// What the outbox's connection follows.
    pub fn generation(&self) -> Arc<Generation> {
        self.opened.clone()
    }
}

/// Opens `opened` again when the writer has opened the file again since
/// (keeping the old connection when that fails).
pub(crate) fn follow(
    opened: &mut Opened,
    generation: &Generation,
    open: impl FnOnce() -> rusqlite::Result<Connection>,
) {
    let now = generation.now();
    if opened.generation == now {
        return;
    }
    match open() {
        Ok(connection) => *opened = Opened { generation: now, connection },
        Err(error) => tracing::debug!(%error, "the store's file cannot be opened again"),
    }
}

/// Looks at an existing file without changing it: it must be a SQLite
/// database that is empty or a healthd store this healthd knows.
fn inspect(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(format!("cannot read: {error}")),
        Ok(metadata) if !metadata.is_file() => return Err("not a regular file".into()),
        Ok(metadata) if metadata.len() == 0 => return Ok(()),
        Ok(_) => {}
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)
        .map_err(|error| format!("cannot open: {error}"))?;
    let not_a_store = |error: rusqlite::Error| format!("not a healthd store: {error}");
    let application_id: i64 =
        connection.query_row("PRAGMA application_id", [], |row| row.get(0)).map_err(not_a_store)?;
    let tables: i64 = connection
        .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table'", [], |row| row.get(0))
        .map_err(not_a_store)?;
    if application_id != APPLICATION_ID {
        if application_id == 0 && tables == 0 {
            return Ok(());
        }
        return Err(format!(
            "not a healthd store (application id {application_id:#x}, {tables} tables): refusing to write to it"
        ));
    }
    let newest: Option<i64> = connection
        .query_row(&format!("SELECT max(version) FROM {MIGRATION_TABLE}"), [], |row| row.get(0))
        .optional()
        .map_err(not_a_store)?
        .flatten();
    let known = newest_version(MIGRATIONS);
    match newest {
        Some(version) if version > known => Err(format!(
            "its schema is version {version}, newer than this healthd knows ({known}): run a newer healthd, or point [storage] path at another file"
        )),
        _ => Ok(()),
    }
}

fn check_row(row: &Row<'_>) -> rusqlite::Result<CheckRow> {
    Ok(CheckRow {
        id: row.get("id")?,
        keep: as_u32(row.get("keep")?),
        next_seq: row.get("next_seq")?,
        rolled_seq: row.get("rolled_seq")?,
        runs_total: as_u64(row.get("runs_total")?),
        failed_total: as_u64(row.get("failed_total")?),
        consecutive_failures: u32::try_from(row.get::<_, i64>("consecutive_failures")?)
            .unwrap_or(0),
        consecutive_successes: u32::try_from(row.get::<_, i64>("consecutive_successes")?)
            .unwrap_or(0),
        status: row.get::<_, Option<i64>>("status")?.map(status_from_code),
        status_since: row.get::<_, Option<i64>>("status_since")?.map(from_micros),
    })
}

fn run_row(row: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        seq: row.get("seq")?,
        slot: row.get("slot")?,
        time: from_micros(row.get("at")?),
        observed: status_from_code(row.get("observed")?),
        status: status_from_code(row.get("status")?),
        value: row.get("value")?,
        output: row.get("output")?,
        duration: Duration::from_micros(as_u64(row.get("duration_us")?)),
    })
}

fn incident_row(row: &Row<'_>) -> rusqlite::Result<IncidentRow> {
    Ok(IncidentRow {
        check: row.get("name")?,
        from: row.get::<_, Option<i64>>("from_status")?.map(status_from_code),
        to: status_from_code(row.get("to_status")?),
        started: from_micros(row.get("started")?),
        ended: row.get::<_, Option<i64>>("ended")?.map(from_micros),
        output: row.get("output")?,
    })
}

/// Reads a roll-up from columns `runs` … `b11` starting at `first`.
fn rollup_at(row: &Row<'_>, first: usize) -> rusqlite::Result<Rollup> {
    let mut rollup = Rollup {
        runs: as_u64(row.get(first)?),
        failed: as_u64(row.get(first + 1)?),
        warned: as_u64(row.get(first + 2)?),
        duration_sum_ms: row.get(first + 3)?,
        duration_min_ms: row.get(first + 4)?,
        duration_max_ms: row.get(first + 5)?,
        buckets: [0; 12],
    };
    for (index, bucket) in rollup.buckets.iter_mut().enumerate() {
        *bucket = as_u64(row.get(first + 6 + index)?);
    }
    Ok(rollup)
}

impl Backend for SqliteWriter {
    fn check(&mut self, instance: &str, name: &str, keep: u32) -> Result<CheckRow, StoreError> {
        let row = self.connection.query_row(
            "INSERT INTO checks (instance, name, keep) VALUES (?1, ?2, ?3)
             ON CONFLICT (instance, name) DO UPDATE SET keep = excluded.keep
             RETURNING *",
            params![instance, name, i64::from(keep)],
            check_row,
        )?;
        // Slots past a smaller `history` are no longer written: their runs go.
        self.connection.execute(
            "DELETE FROM runs WHERE check_id = ?1 AND slot >= ?2",
            params![row.id, i64::from(keep)],
        )?;
        Ok(row)
    }

    fn runs_after(&mut self, check_id: i64, after: i64) -> Result<Vec<RunRow>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT * FROM runs WHERE check_id = ?1 AND seq > ?2 ORDER BY seq")?;
        let rows = statement.query_map(params![check_id, after], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let transaction = self.connection.transaction()?;
        {
            let mut insert_run = transaction.prepare_cached(
                "INSERT OR REPLACE INTO runs
                 (check_id, slot, seq, at, observed, status, value, output, duration_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for (check_id, run) in &batch.runs {
                insert_run.execute(params![
                    check_id,
                    run.slot,
                    run.seq,
                    micros(run.time),
                    status_code(run.observed),
                    status_code(run.status),
                    run.value,
                    run.output,
                    duration_micros(run.duration),
                ])?;
            }
            let mut end_incident = transaction.prepare_cached(
                "UPDATE incidents SET ended = ?2 WHERE check_id = ?1 AND ended IS NULL",
            )?;
            let mut insert_incident = transaction.prepare_cached(
                "INSERT INTO incidents (check_id, from_status, to_status, started, output)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (check_id, incident) in &batch.incidents {
                end_incident.execute(params![check_id, micros(incident.started)])?;
                insert_incident.execute(params![
                    check_id,
                    incident.from.map(status_code),
                    status_code(incident.to),
                    micros(incident.started),
                    incident.output,
                ])?;
            }
            for resolution in [Resolution::Hourly, Resolution::Daily] {
                let mut add = transaction.prepare_cached(&format!(
                    "INSERT INTO {table} (check_id, period, runs, failed, warned, sum_ms, min_ms, max_ms, {BUCKET_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)
                     ON CONFLICT (check_id, period) DO UPDATE SET
                       runs = runs + excluded.runs, failed = failed + excluded.failed,
                       warned = warned + excluded.warned, sum_ms = sum_ms + excluded.sum_ms,
                       min_ms = min(min_ms, excluded.min_ms), max_ms = max(max_ms, excluded.max_ms),
                       b0 = b0 + excluded.b0, b1 = b1 + excluded.b1, b2 = b2 + excluded.b2,
                       b3 = b3 + excluded.b3, b4 = b4 + excluded.b4, b5 = b5 + excluded.b5,
                       b6 = b6 + excluded.b6, b7 = b7 + excluded.b7, b8 = b8 + excluded.b8,
                       b9 = b9 + excluded.b9, b10 = b10 + excluded.b10, b11 = b11 + excluded.b11",
                    table = resolution.table()
                ))?;
                for (_, check_id, period, rollup) in
                    batch.rollups.iter().filter(|(which, ..)| *which == resolution)
                {
                    let mut values: Vec<rusqlite::types::Value> = vec![
                        (*check_id).into(),
                        (*period).into(),
                        as_i64(rollup.runs).into(),
                        as_i64(rollup.failed).into(),
                        as_i64(rollup.warned).into(),
                        rollup.duration_sum_ms.into(),
                        rollup.duration_min_ms.into(),
                        rollup.duration_max_ms.into(),
                    ];
                    values.extend(rollup.buckets.iter().map(|&count| as_i64(count).into()));
                    add.execute(params_from_iter(values))?;
                }
            }
            let mut update_check = transaction.prepare_cached(
                "UPDATE checks SET next_seq = ?2, rolled_seq = ?3, runs_total = ?4,
                 failed_total = ?5, consecutive_failures = ?6, consecutive_successes = ?7,
                 status = ?8, status_since = ?9 WHERE id = ?1",
            )?;
            for row in &batch.checks {
                update_check.execute(params![
                    row.id,
                    row.next_seq,
                    row.rolled_seq,
                    as_i64(row.runs_total),
                    as_i64(row.failed_total),
                    i64::from(row.consecutive_failures),
                    i64::from(row.consecutive_successes),
                    row.status.map(status_code),
                    row.status_since.map(micros),
                ])?;
            }
            let mut save_pings = transaction.prepare_cached(
                "INSERT INTO pings (instance, check_name, last_ping, last_outcome, exit_status,
                   last_start, last_duration_us, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (instance, check_name) DO UPDATE SET
                   last_ping = excluded.last_ping, last_outcome = excluded.last_outcome,
                   exit_status = excluded.exit_status, last_start = excluded.last_start,
                   last_duration_us = excluded.last_duration_us, body = excluded.body",
            )?;
            for (check, state) in &batch.pings {
                let (outcome, exit_status) = outcome_columns(state.last_outcome);
                save_pings.execute(params![
                    batch.instance,
                    check.as_ref(),
                    state.last_ping.map(micros),
                    outcome,
                    exit_status,
                    state.last_start.map(micros),
                    state.last_duration.map(duration_micros),
                    state.body,
                ])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    fn prune(&mut self, check_ids: &[i64], cutoffs: Cutoffs) -> Result<u64, StoreError> {
        let Cutoffs { first_hour, first_day, incidents_before } = cutoffs;
        let transaction = self.connection.transaction()?;
        let mut removed = 0;
        {
            let mut hourly = transaction
                .prepare_cached("DELETE FROM hourly WHERE check_id = ?1 AND period < ?2")?;
            let mut daily = transaction
                .prepare_cached("DELETE FROM daily WHERE check_id = ?1 AND period < ?2")?;
            let mut incidents = transaction.prepare_cached(
                "DELETE FROM incidents WHERE check_id = ?1 AND ended IS NOT NULL AND ended < ?2",
            )?;
            for id in check_ids {
                removed += hourly.execute(params![id, first_hour])?;
                removed += daily.execute(params![id, first_day])?;
                removed += incidents.execute(params![id, incidents_before])?;
            }
        }
        transaction.commit()?;
        Ok(removed as u64)
    }

    fn check_ids(&mut self, instance: &str) -> Result<Vec<i64>, StoreError> {
        let mut statement =
            self.connection.prepare_cached("SELECT id FROM checks WHERE instance = ?1")?;
        let ids = statement.query_map([instance], |row| row.get(0))?;
        Ok(ids.collect::<Result<_, _>>()?)
    }

    fn reopen(&mut self) -> Result<bool, StoreError> {
        self.connection = open_writing(&self.path)?;
        self.opened.0.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }
}

impl SqliteReader {
    /// A free reading connection, or the first one to come free.
    fn with<T>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let free = self.connections.iter().find_map(|connection| connection.try_lock().ok());
        let mut opened = match free {
            Some(connection) => connection,
            None => self.connections[0].lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        };
        follow(&mut opened, &self.opened, || open_reading(&self.path));
        Ok(query(&opened.connection)?)
    }
}

fn placeholders(from: usize, count: usize) -> String {
    (from..from + count).map(|index| format!("?{index}")).collect::<Vec<_>>().join(", ")
}

impl Reader for SqliteReader {
    fn remembered(&self, instance: &str) -> Result<Vec<StoredCheck>, StoreError> {
        self.with(|connection| {
            let mut checks: Vec<StoredCheck> = Vec::new();
            let mut position = HashMap::new();
            let mut statement = connection.prepare("SELECT * FROM checks WHERE instance = ?1")?;
            let mut rows = statement.query([instance])?;
            while let Some(row) = rows.next()? {
                position.insert(row.get::<_, i64>("id")?, checks.len());
                checks.push(StoredCheck {
                    name: row.get("name")?,
                    row: check_row(row)?,
                    runs: Vec::new(),
                    latest_incident: None,
                });
            }
            let mut statement = connection.prepare(
                "SELECT runs.* FROM runs JOIN checks ON checks.id = runs.check_id
                 WHERE checks.instance = ?1 ORDER BY runs.check_id, runs.seq",
            )?;
            let mut rows = statement.query([instance])?;
            while let Some(row) = rows.next()? {
                if let Some(&index) = position.get(&row.get::<_, i64>("check_id")?) {
                    let run = run_row(row)?;
                    let check = &mut checks[index];
                    // Only the newest `keep` runs: a smaller `history` leaves older ones behind.
                    check.runs.push(run);
                }
            }
            let mut statement = connection.prepare(
                "SELECT incidents.*, checks.name FROM incidents JOIN checks ON checks.id = incidents.check_id
                 WHERE incidents.id IN (SELECT max(incidents.id) FROM incidents
                   JOIN checks ON checks.id = incidents.check_id WHERE checks.instance = ?1
                   GROUP BY incidents.check_id)",
            )?;
            let mut rows = statement.query([instance])?;
            while let Some(row) = rows.next()? {
                if let Some(&index) = position.get(&row.get::<_, i64>("check_id")?) {
                    checks[index].latest_incident = Some(incident_row(row)?);
                }
            }
            for check in &mut checks {
                let keep = check.row.keep as usize;
                if check.runs.len() > keep {
                    check.runs.drain(..check.runs.len() - keep);
                }
            }
            Ok(checks)
        })
    }

    fn rollup_sums(
        &self,
        instance: &str,
        names: &[&str],
        resolution: Resolution,
        first_period: i64,
    ) -> Result<HashMap<String, Rollup>, StoreError> {
        self.with(|connection| {
            let sql = format!(
                "SELECT checks.name, sum(runs), sum(failed), sum(warned), sum(sum_ms), min(min_ms), max(max_ms),
                   sum(b0), sum(b1), sum(b2), sum(b3), sum(b4), sum(b5), sum(b6), sum(b7), sum(b8), sum(b9), sum(b10), sum(b11)
                 FROM {table} JOIN checks ON checks.id = {table}.check_id
                 WHERE checks.instance = ?1 AND {table}.period >= ?2 AND checks.name IN ({names})
                 GROUP BY checks.name",
                table = resolution.table(),
                names = placeholders(3, names.len()),
            );
            let mut values: Vec<rusqlite::types::Value> =
                vec![instance.to_string().into(), first_period.into()];
            values.extend(names.iter().map(|name| name.to_string().into()));
            let mut statement = connection.prepare_cached(&sql)?;
            let rows = statement
                .query_map(params_from_iter(values), |row| Ok((row.get(0)?, rollup_at(row, 1)?)))?;
            rows.collect()
        })
    }

    fn rollups(
        &self,
        instance: &str,
        name: &str,
        resolution: Resolution,
        first: i64,
        last: i64,
    ) -> Result<Vec<(i64, Rollup)>, StoreError> {
        self.with(|connection| {
            let sql = format!(
                "SELECT period, runs, failed, warned, sum_ms, min_ms, max_ms, {BUCKET_COLUMNS}
                 FROM {table} JOIN checks ON checks.id = {table}.check_id
                 WHERE checks.instance = ?1 AND checks.name = ?2 AND period BETWEEN ?3 AND ?4
                 ORDER BY period",
                table = resolution.table()
            );
            let mut statement = connection.prepare_cached(&sql)?;
            let rows = statement.query_map(params![instance, name, first, last], |row| {
                Ok((row.get(0)?, rollup_at(row, 1)?))
            })?;
            rows.collect()
        })
    }

    fn runs_between(
        &self,
        instance: &str,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RunRow>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT runs.* FROM runs JOIN checks ON checks.id = runs.check_id
                 WHERE checks.instance = ?1 AND checks.name = ?2 AND runs.at BETWEEN ?3 AND ?4
                 ORDER BY runs.seq",
            )?;
            let rows =
                statement.query_map(params![instance, name, micros(from), micros(to)], run_row)?;
            rows.collect()
        })
    }

    fn oldest_run(&self, instance: &str, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.with(|connection| {
            let oldest: Option<i64> = connection.query_row(
                "SELECT min(runs.at) FROM runs JOIN checks ON checks.id = runs.check_id
                 WHERE checks.instance = ?1 AND checks.name = ?2",
                params![instance, name],
                |row| row.get(0),
            )?;
            Ok(oldest.map(from_micros))
        })
    }

    fn incidents(
        &self,
        instance: &str,
        names: &[&str],
        limit: u32,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        self.with(|connection| {
            let only = if names.is_empty() {
                String::new()
            } else {
                format!("AND checks.name IN ({})", placeholders(3, names.len()))
            };
            let sql = format!(
                "SELECT incidents.*, checks.name FROM incidents JOIN checks ON checks.id = incidents.check_id
                 WHERE checks.instance = ?1 {only} ORDER BY incidents.started DESC, incidents.id DESC LIMIT ?2"
            );
            let mut values: Vec<rusqlite::types::Value> =
                vec![instance.to_string().into(), i64::from(limit).into()];
            values.extend(names.iter().map(|name| name.to_string().into()));
            let mut statement = connection.prepare_cached(&sql)?;
            let rows = statement.query_map(params_from_iter(values), incident_row)?;
            rows.collect()
        })
    }

    fn pings(&self, instance: &str) -> Result<HashMap<String, PingState>, StoreError> {
        self.with(|connection| {
            let mut statement =
                connection.prepare_cached("SELECT * FROM pings WHERE instance = ?1")?;
            let rows = statement.query_map([instance], |row| {
                let state = PingState {
                    last_ping: row.get::<_, Option<i64>>("last_ping")?.map(from_micros),
                    last_outcome: outcome_from_columns(
                        row.get::<_, Option<String>>("last_outcome")?.as_deref(),
                        row.get("exit_status")?,
                    ),
                    last_start: row.get::<_, Option<i64>>("last_start")?.map(from_micros),
                    last_duration: row
                        .get::<_, Option<i64>>("last_duration_us")?
                        .map(|micros| Duration::from_micros(as_u64(micros))),
                    body: row.get("body")?,
                };
                Ok((row.get("check_name")?, state))
            })?;
            rows.collect()
        })
    }
}
