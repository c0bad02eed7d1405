//! The PostgreSQL store, for fleets whose pods move and whose disks do not
//! last: the SQLite store's tables in PostgreSQL, every row hanging off a
//! `checks` row whose `instance` keeps two healthd apart in one database.
//!
//! The store's traits are synchronous (the writer is a thread of its own,
//! queries run on actix's blocking pool), so the backend has a small tokio
//! runtime of its own for tokio-postgres and deadpool, and every call is
//! bounded: a stopped or frozen PostgreSQL answers an error within the
//! bound (the writer then retries with backoff), never a hang. A
//! connection whose call did not finish is closed, never reused.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use refinery::Migration;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::base::secret::Secret;
use crate::checks::util::categories::error_chain;
use crate::checks::util::guard::AbandonUnlessFinished;
use crate::checks::util::postgres_tls::{self, split_sslmode};
use crate::checks::PingState;
use crate::store::outbox::{Attempted, Outbox, OutboxEntry};
use crate::store::rollup::Rollup;
use crate::store::{
    as_i64, as_u32, as_u64, duration_micros, from_micros, micros, newest_version, outcome_columns,
    outcome_from_columns, status_code, status_from_code, Backend, Batch, CheckRow, Cutoffs,
    IncidentRow, Reader, Resolution, RunRow, StoreError, StoredCheck, BUCKET_COLUMNS,
    QUERY_DEADLINE,
};

const MIGRATION_TABLE: &str = "healthd_migrations";
/// The schema versions this healthd knows, oldest first.
const MIGRATIONS: &[(&str, &str)] = &[
    ("V1__store", include_str!("postgresql/V1__store.sql")),
    ("V3__alerts", include_str!("postgresql/V3__alerts.sql")),
    ("V4__pings", include_str!("postgresql/V4__pings.sql")),
];
/// The tables of the schema: any of them without `MIGRATION_TABLE` beside
/// it means the database holds someone else's tables of those names.
const TABLES: &[&str] =
    &["checks", "runs", "hourly", "daily", "incidents", "outbox", "alerts", "pings"];
/// The advisory lock two healthd starting at once take around the
/// inspection and the migrations ("hlth", as the SQLite application id).
const MIGRATION_LOCK: i64 = 0x686c_7468;
/// Connections: the writer's and a few for queries.
const POOL_SIZE: usize = 4;
/// Connecting, TLS included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One call of the writer (a batch, a check's row, a pruning step).
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Opening: connecting, inspecting and migrating, waiting for another
/// healthd's migrations.
const OPEN_DEADLINE: Duration = Duration::from_secs(30);

pub struct PostgresWriter {
    database: Database,
}

pub struct PostgresReader {
    database: Database,
}

/// The pool and the runtime its connections live on, shared by the writer
/// and the reader.
#[derive(Clone)]
struct Database {
    pool: Pool,
    runtime: Arc<OwnRuntime>,
}

/// A runtime that may be dropped anywhere: the last store handle can go
/// inside async code, where dropping a runtime the usual way panics.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A pooled connection for one call: back to the pool when the call
/// finished, closed when it failed or its bound passed.
type Held = AbandonUnlessFinished<Object, fn(Object)>;

/// Connects to the database `url` names (with `sslmode` as the postgres
/// kind reads it, and `ca_file`), refuses one that is not a healthd store
/// or whose schema is newer, and migrates it.
pub fn open(
    url: &Secret,
    ca_file: Option<&Path>,
) -> Result<(PostgresWriter, PostgresReader), StoreError> {
    let (dsn, asked) = split_sslmode(url.expose());
    // The parser's message never repeats the URL.
    let mut config: tokio_postgres::Config = dsn.parse().map_err(|error| {
        StoreError::Refused(format!("not a PostgreSQL connection string: {error}"))
    })?;
    let shown = shown(&config);
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("healthd-store");
    let verify = postgres_tls::verify_for(asked, ca_file.is_some());
    let manager = postgres_tls::manager(
        config,
        verify,
        ca_file,
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    )
    .map_err(|error| StoreError::Refused(format!("{shown}: {error:#}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("healthd-store-pg")
        .enable_all()
        .build()
        .map_err(|error| StoreError::Other(format!("cannot start the store's runtime: {error}")))?;
    let pool = Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(QUERY_DEADLINE))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|error| StoreError::Other(format!("cannot make the connection pool: {error}")))?;
    let database = Database { pool, runtime: Arc::new(OwnRuntime(Some(runtime))) };
    database.call(OPEN_DEADLINE, || database.migrate(&shown)).map_err(|error| match error {
        StoreError::Refused(reason) => StoreError::Refused(reason),
        StoreError::Postgres(error) => {
            StoreError::Refused(format!("{shown}: {}", error_chain(&error)))
        }
        other => StoreError::Refused(format!("{shown}: {other}")),
    })?;
    Ok((PostgresWriter { database: database.clone() }, PostgresReader { database }))
}

/// The database as errors name it: host, port and database, never the
/// user or the password.
fn shown(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or_default();
    let database = config.get_dbname().unwrap_or(user);
    format!("PostgreSQL database {database} at {host}:{port}")
}

impl Database {
    /// Runs the future `work` makes on the store's runtime, answering an
    /// error once `limit` has passed.
    fn call<T: Send, F: Future<Output = Result<T, StoreError>>>(
        &self,
        limit: Duration,
        work: impl FnOnce() -> F + Send,
    ) -> Result<T, StoreError> {
        let runtime = self.runtime.0.as_ref().expect("present until dropped");
        let bounded = || {
            runtime.block_on(async {
                tokio::time::timeout(limit, work()).await.unwrap_or_else(|_| {
                    Err(StoreError::Other(format!(
                        "PostgreSQL did not answer within {} s",
                        limit.as_secs()
                    )))
                })
            })
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Called from a runtime's thread (healthd's start-up), where
            // blocking on another runtime panics: from a thread of its own.
            std::thread::scope(|scope| scope.spawn(bounded).join()).unwrap_or_else(|_| {
                Err(StoreError::Other("a call to the PostgreSQL store panicked".into()))
            })
        } else {
            bounded()
        }
    }

    async fn connection(&self) -> Result<Held, StoreError> {
        let object = self.pool.get().await.map_err(|error| match error {
            deadpool_postgres::PoolError::Backend(error) => StoreError::Postgres(error),
            other => StoreError::Other(format!("PostgreSQL: {other}")),
        })?;
        let abandon: fn(Object) = |object| drop(Object::take(object));
        Ok(AbandonUnlessFinished::new(object, abandon))
    }

    /// Under the advisory lock: inspects the database, then migrates it.
    async fn migrate(&self, shown: &str) -> Result<(), StoreError> {
        let mut held = self.connection().await?;
        let client = held.connection();
        client.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).await?;
        inspect(client)
            .await
            .map_err(|reason| StoreError::Refused(format!("{shown}: {reason}")))?;
        let migrations = MIGRATIONS
            .iter()
            .map(|(name, sql)| Migration::unapplied(name, sql))
            .collect::<Result<Vec<_>, _>>()?;
        let mut runner = refinery::Runner::new(&migrations).set_abort_missing(true);
        runner.set_migration_table_name(MIGRATION_TABLE);
        runner.run_async(&mut ***client).await?;
        client.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).await?;
        drop(held.finish());
        Ok(())
    }
}

/// Looks at the database without changing it: it must hold none of our
/// tables, or be a healthd store this healthd knows.
async fn inspect(client: &Object) -> Result<(), String> {
    let failed = |error: tokio_postgres::Error| format!("cannot inspect: {error}");
    let names: Vec<String> = TABLES.iter().map(|table| (*table).to_string()).collect();
    let found: Vec<String> = client
        .query(
            "SELECT name FROM unnest($1::text[]) AS name WHERE to_regclass(name) IS NOT NULL",
            &[&names],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let has_migrations = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&MIGRATION_TABLE])
        .await
        .map_err(failed)?
        .get::<_, bool>(0);
    if !has_migrations {
        if found.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "not a healthd store: it has tables named {} but no {MIGRATION_TABLE}: refusing to write to it; give healthd a database (or schema) of its own",
            found.join(", ")
        ));
    }
    let newest: Option<i32> = client
        .query_one(&format!("SELECT max(version) FROM {MIGRATION_TABLE}"), &[])
        .await
        .map_err(|error| format!("not a healthd store ({MIGRATION_TABLE} unreadable: {error})"))?
        .try_get(0)
        .map_err(|error| format!("not a healthd store ({MIGRATION_TABLE}: {error})"))?;
    let known = i32::try_from(newest_version(MIGRATIONS)).unwrap_or(i32::MAX);
    match newest {
        Some(version) if version > known => Err(format!(
            "its healthd schema is version {version}, newer than this healthd knows ({known}): run a newer healthd, or point [storage] url_env at another database"
        )),
        // Migrated, yet tables are gone: writing would fail forever.
        Some(version) if version == known && found.len() < TABLES.len() => {
            let missing: Vec<&str> =
                TABLES.iter().copied().filter(|table| !found.iter().any(|f| f == table)).collect();
            Err(format!(
                "a healthd store missing its tables {}: restore it, or point [storage] url_env at another database",
                missing.join(", ")
            ))
        }
        _ => Ok(()),
    }
}

fn check_row(row: &Row) -> Result<CheckRow, tokio_postgres::Error> {
    Ok(CheckRow {
        id: row.try_get("id")?,
        keep: as_u32(row.try_get("keep")?),
        next_seq: row.try_get("next_seq")?,
        rolled_seq: row.try_get("rolled_seq")?,
        runs_total: as_u64(row.try_get("runs_total")?),
        failed_total: as_u64(row.try_get("failed_total")?),
        consecutive_failures: as_u32(row.try_get("consecutive_failures")?),
        consecutive_successes: as_u32(row.try_get("consecutive_successes")?),
        status: row.try_get::<_, Option<i64>>("status")?.map(status_from_code),
        status_since: row.try_get::<_, Option<i64>>("status_since")?.map(from_micros),
    })
}

fn run_row(row: &Row) -> Result<RunRow, tokio_postgres::Error> {
    Ok(RunRow {
        seq: row.try_get("seq")?,
        slot: row.try_get("slot")?,
        time: from_micros(row.try_get("at")?),
        observed: status_from_code(row.try_get("observed")?),
        status: status_from_code(row.try_get("status")?),
        value: row.try_get("value")?,
        output: row.try_get("output")?,
        duration: Duration::from_micros(as_u64(row.try_get("duration_us")?)),
    })
}

fn incident_row(row: &Row) -> Result<IncidentRow, tokio_postgres::Error> {
    Ok(IncidentRow {
        check: row.try_get("name")?,
        from: row.try_get::<_, Option<i64>>("from_status")?.map(status_from_code),
        to: status_from_code(row.try_get("to_status")?),
        started: from_micros(row.try_get("started")?),
        ended: row.try_get::<_, Option<i64>>("ended")?.map(from_micros),
        output: row.try_get("output")?,
    })
}

/// Reads a roll-up from columns `runs` … `b11` starting at `first`.
fn rollup_at(row: &Row, first: usize) -> Result<Rollup, tokio_postgres::Error> {
    let mut rollup = Rollup {
        runs: as_u64(row.try_get(first)?),
        failed: as_u64(row.try_get(first + 1)?),
        warned: as_u64(row.try_get(first + 2)?),
        duration_sum_ms: row.try_get(first + 3)?,
        duration_min_ms: row.try_get(first + 4)?,
        duration_max_ms: row.try_get(first + 5)?,
        buckets: [0; 12],
    };
    for (index, bucket) in rollup.buckets.iter_mut().enumerate() {
        *bucket = as_u64(row.try_get(first + 6 + index)?);
    }
    Ok(rollup)
}

/// A batch as column arrays, one statement per table: a batch costs a few
/// round trips however many runs it holds. Rows a batch holds twice (it
/// grows while writes fail) are made one first, as PostgreSQL cannot
/// update a row twice in one statement.
#[derive(Default)]
struct Columns {
    runs: RunColumns,
    /// The open incident of each check to end, and when.
    ended: (Vec<i64>, Vec<i64>),
    incidents: IncidentColumns,
    hourly: RollupColumns,
    daily: RollupColumns,
    checks: CheckColumns,
    pings: PingColumns,
}

#[derive(Default)]
struct PingColumns {
    check_name: Vec<String>,
    last_ping: Vec<Option<i64>>,
    last_outcome: Vec<Option<String>>,
    exit_status: Vec<Option<i64>>,
    last_start: Vec<Option<i64>>,
    last_duration_us: Vec<Option<i64>>,
    body: Vec<Option<String>>,
}

#[derive(Default)]
struct RunColumns {
    check_id: Vec<i64>,
    slot: Vec<i64>,
    seq: Vec<i64>,
    at: Vec<i64>,
    observed: Vec<i64>,
    status: Vec<i64>,
    value: Vec<Option<f64>>,
    output: Vec<Option<String>>,
    duration_us: Vec<i64>,
}

#[derive(Default)]
struct IncidentColumns {
    check_id: Vec<i64>,
    from_status: Vec<Option<i64>>,
    to_status: Vec<i64>,
    started: Vec<i64>,
    ended: Vec<Option<i64>>,
    output: Vec<Option<String>>,
}

#[derive(Default)]
struct RollupColumns {
    check_id: Vec<i64>,
    period: Vec<i64>,
    counts: [Vec<i64>; 3],
    durations: [Vec<f64>; 3],
    buckets: [Vec<i64>; 12],
}

#[derive(Default)]
struct CheckColumns {
    id: Vec<i64>,
    next_seq: Vec<i64>,
    rolled_seq: Vec<i64>,
    runs_total: Vec<i64>,
    failed_total: Vec<i64>,
    consecutive_failures: Vec<i64>,
    consecutive_successes: Vec<i64>,
    status: Vec<Option<i64>>,
    status_since: Vec<Option<i64>>,
}

impl Columns {
    fn of(batch: &Batch) -> Columns {
        let mut columns = Columns::default();
        // The newest run of each slot.
        let mut slots: HashMap<(i64, i64), &RunRow> = HashMap::new();
        let mut order = Vec::new();
        for (check_id, run) in &batch.runs {
            if slots.insert((*check_id, run.slot), run).is_none() {
                order.push((*check_id, run.slot));
            }
        }
        for key in order {
            let run = slots[&key];
            let runs = &mut columns.runs;
            runs.check_id.push(key.0);
            runs.slot.push(run.slot);
            runs.seq.push(run.seq);
            runs.at.push(micros(run.time));
            runs.observed.push(status_code(run.observed));
            runs.status.push(status_code(run.status));
            runs.value.push(run.value);
            runs.output.push(run.output.clone());
            runs.duration_us.push(duration_micros(run.duration));
        }
        // Each new incident ends the check's one before it: in the store
        // for the first of the batch, here for the others.
        let mut last_of: HashMap<i64, usize> = HashMap::new();
        for (check_id, incident) in &batch.incidents {
            let incidents = &mut columns.incidents;
            match last_of.insert(*check_id, incidents.check_id.len()) {
                Some(before) => incidents.ended[before] = Some(micros(incident.started)),
                None => {
                    columns.ended.0.push(*check_id);
                    columns.ended.1.push(micros(incident.started));
                }
            }
            incidents.check_id.push(*check_id);
            incidents.from_status.push(incident.from.map(status_code));
            incidents.to_status.push(status_code(incident.to));
            incidents.started.push(micros(incident.started));
            incidents.ended.push(None);
            incidents.output.push(incident.output.clone());
        }
        let mut sums: HashMap<(Resolution, i64, i64), Rollup> = HashMap::new();
        for (resolution, check_id, period, rollup) in &batch.rollups {
            sums.entry((*resolution, *check_id, *period)).or_default().merge(rollup);
        }
        for ((resolution, check_id, period), rollup) in sums {
            let into = match resolution {
                Resolution::Hourly => &mut columns.hourly,
                Resolution::Daily => &mut columns.daily,
            };
            into.check_id.push(check_id);
            into.period.push(period);
            for (column, count) in
                into.counts.iter_mut().zip([rollup.runs, rollup.failed, rollup.warned])
            {
                column.push(as_i64(count));
            }
            for (column, value) in into.durations.iter_mut().zip([
                rollup.duration_sum_ms,
                rollup.duration_min_ms,
                rollup.duration_max_ms,
            ]) {
                column.push(value);
            }
            for (column, count) in into.buckets.iter_mut().zip(rollup.buckets) {
                column.push(as_i64(count));
            }
        }
        // The newest row of each check.
        let mut newest: HashMap<i64, &CheckRow> = HashMap::new();
        for row in &batch.checks {
            newest.insert(row.id, row);
        }
        for row in newest.values() {
            let checks = &mut columns.checks;
            checks.id.push(row.id);
            checks.next_seq.push(row.next_seq);
            checks.rolled_seq.push(row.rolled_seq);
            checks.runs_total.push(as_i64(row.runs_total));
            checks.failed_total.push(as_i64(row.failed_total));
            checks.consecutive_failures.push(i64::from(row.consecutive_failures));
            checks.consecutive_successes.push(i64::from(row.consecutive_successes));
            checks.status.push(row.status.map(status_code));
            checks.status_since.push(row.status_since.map(micros));
        }
        for (check, state) in &batch.pings {
            let pings = &mut columns.pings;
            let (outcome, exit_status) = outcome_columns(state.last_outcome);
            pings.check_name.push(check.to_string());
            pings.last_ping.push(state.last_ping.map(micros));
            pings.last_outcome.push(outcome.map(str::to_string));
            pings.exit_status.push(exit_status);
            pings.last_start.push(state.last_start.map(micros));
            pings.last_duration_us.push(state.last_duration.map(duration_micros));
            pings.body.push(state.body.clone());
        }
        columns
    }
}

fn add_rollups_sql(resolution: Resolution) -> String {
    let table = resolution.table();
    let buckets: Vec<String> =
        (0..12).map(|index| format!("b{index} = t.b{index} + excluded.b{index}")).collect();
    let arrays: Vec<String> = (9..=20).map(|index| format!("${index}::bigint[]")).collect();
    format!(
        "INSERT INTO {table} AS t (check_id, period, runs, failed, warned, sum_ms, min_ms, max_ms, {BUCKET_COLUMNS})
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
           $6::float8[], $7::float8[], $8::float8[], {arrays})
         ON CONFLICT (check_id, period) DO UPDATE SET
           runs = t.runs + excluded.runs, failed = t.failed + excluded.failed,
           warned = t.warned + excluded.warned, sum_ms = t.sum_ms + excluded.sum_ms,
           min_ms = least(t.min_ms, excluded.min_ms), max_ms = greatest(t.max_ms, excluded.max_ms),
           {buckets}",
        arrays = arrays.join(", "),
        buckets = buckets.join(", "),
    )
}

impl PostgresWriter {
    async fn write_batch(&self, instance: &str, columns: &Columns) -> Result<(), StoreError> {
        let mut held = self.database.connection().await?;
        let client = held.connection();
        let transaction = client.transaction().await?;
        if !columns.runs.check_id.is_empty() {
            let runs = &columns.runs;
            let statement = transaction
                .prepare_cached(
                    "INSERT INTO runs (check_id, slot, seq, at, observed, status, value, output, duration_us)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                       $5::bigint[], $6::bigint[], $7::float8[], $8::text[], $9::bigint[])
                     ON CONFLICT (check_id, slot) DO UPDATE SET
                       seq = excluded.seq, at = excluded.at, observed = excluded.observed,
                       status = excluded.status, value = excluded.value, output = excluded.output,
                       duration_us = excluded.duration_us",
                )
                .await?;
            transaction
                .execute(
                    &statement,
                    &[
                        &runs.check_id,
                        &runs.slot,
                        &runs.seq,
                        &runs.at,
                        &runs.observed,
                        &runs.status,
                        &runs.value,
                        &runs.output,
                        &runs.duration_us,
                    ],
                )
                .await?;
        }
        if !columns.incidents.check_id.is_empty() {
            let end = transaction
                .prepare_cached(
                    "UPDATE incidents SET ended = e.at
                     FROM unnest($1::bigint[], $2::bigint[]) AS e (check_id, at)
                     WHERE incidents.check_id = e.check_id AND incidents.ended IS NULL",
                )
                .await?;
            transaction.execute(&end, &[&columns.ended.0, &columns.ended.1]).await?;
            let incidents = &columns.incidents;
            // In the batch's order, so that ids grow with each check's changes.
            let insert = transaction
                .prepare_cached(
                    "INSERT INTO incidents (check_id, from_status, to_status, started, ended, output)
                     SELECT check_id, from_status, to_status, started, ended, output
                     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                       $5::bigint[], $6::text[])
                       WITH ORDINALITY AS i (check_id, from_status, to_status, started, ended, output, n)
                     ORDER BY n",
                )
                .await?;
            transaction
                .execute(
                    &insert,
                    &[
                        &incidents.check_id,
                        &incidents.from_status,
                        &incidents.to_status,
                        &incidents.started,
                        &incidents.ended,
                        &incidents.output,
                    ],
                )
                .await?;
        }
        for (resolution, rollups) in
            [(Resolution::Hourly, &columns.hourly), (Resolution::Daily, &columns.daily)]
        {
            if rollups.check_id.is_empty() {
                continue;
            }
            let statement = transaction.prepare_cached(&add_rollups_sql(resolution)).await?;
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&rollups.check_id, &rollups.period];
            params.extend(rollups.counts.iter().map(|column| column as &(dyn ToSql + Sync)));
            params.extend(rollups.durations.iter().map(|column| column as &(dyn ToSql + Sync)));
            params.extend(rollups.buckets.iter().map(|column| column as &(dyn ToSql + Sync)));
            transaction.execute(&statement, &params).await?;
        }
        if !columns.checks.id.is_empty() {
            let checks = &columns.checks;
            let statement = transaction
                .prepare_cached(
                    "UPDATE checks SET next_seq = u.next_seq, rolled_seq = u.rolled_seq,
                       runs_total = u.runs_total, failed_total = u.failed_total,
                       consecutive_failures = u.consecutive_failures,
                       consecutive_successes = u.consecutive_successes,
                       status = u.status, status_since = u.status_since
                     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                       $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
                       AS u (id, next_seq, rolled_seq, runs_total, failed_total,
                         consecutive_failures, consecutive_successes, status, status_since)
                     WHERE checks.id = u.id",
                )
                .await?;
            transaction
                .execute(
                    &statement,
                    &[
                        &checks.id,
                        &checks.next_seq,
                        &checks.rolled_seq,
                        &checks.runs_total,
                        &checks.failed_total,
                        &checks.consecutive_failures,
                        &checks.consecutive_successes,
                        &checks.status,
                        &checks.status_since,
                    ],
                )
                .await?;
        }
        if !columns.pings.check_name.is_empty() {
            let pings = &columns.pings;
            let statement = transaction
                .prepare_cached(
                    "INSERT INTO pings (instance, check_name, last_ping, last_outcome, exit_status,
                       last_start, last_duration_us, body)
                     SELECT $1::text, * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::bigint[],
                       $6::bigint[], $7::bigint[], $8::text[])
                     ON CONFLICT (instance, check_name) DO UPDATE SET
                       last_ping = excluded.last_ping, last_outcome = excluded.last_outcome,
                       exit_status = excluded.exit_status, last_start = excluded.last_start,
                       last_duration_us = excluded.last_duration_us, body = excluded.body",
                )
                .await?;
            transaction
                .execute(
                    &statement,
                    &[
                        &instance,
                        &pings.check_name,
                        &pings.last_ping,
                        &pings.last_outcome,
                        &pings.exit_status,
                        &pings.last_start,
                        &pings.last_duration_us,
                        &pings.body,
                    ],
                )
                .await?;
        }
        transaction.commit().await?;
        drop(held.finish());
        Ok(())
    }
}

impl Backend for PostgresWriter {
    fn check(&mut self, instance: &str, name: &str, keep: u32) -> Result<CheckRow, StoreError> {
        let database = &self.database;
        database.call(WRITE_DEADLINE, || async move {
            let mut held = database.connection().await?;
            let client = held.connection();
            let upsert = client
                .prepare_cached(
                    "INSERT INTO checks (instance, name, keep) VALUES ($1, $2, $3)
                     ON CONFLICT (instance, name) DO UPDATE SET keep = excluded.keep
                     RETURNING *",
                )
                .await?;
            let row = check_row(
                &client.query_one(&upsert, &[&instance, &name, &i64::from(keep)]).await?,
            )?;
            // Slots past a smaller `history` are no longer written: their runs go.
            let forget = client
                .prepare_cached("DELETE FROM runs WHERE check_id = $1 AND slot >= $2")
                .await?;
            client.execute(&forget, &[&row.id, &i64::from(keep)]).await?;
            drop(held.finish());
            Ok(row)
        })
    }

    fn runs_after(&mut self, check_id: i64, after: i64) -> Result<Vec<RunRow>, StoreError> {
        let database = &self.database;
        database.call(WRITE_DEADLINE, || async move {
            let mut held = database.connection().await?;
            let client = held.connection();
            let statement = client
                .prepare_cached("SELECT * FROM runs WHERE check_id = $1 AND seq > $2 ORDER BY seq")
                .await?;
            let rows = client.query(&statement, &[&check_id, &after]).await?;
            let runs = rows.iter().map(run_row).collect::<Result<_, _>>()?;
            drop(held.finish());
            Ok(runs)
        })
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let columns = Columns::of(batch);
        self.database.call(WRITE_DEADLINE, || self.write_batch(&batch.instance, &columns))
    }

    fn prune(&mut self, check_ids: &[i64], cutoffs: Cutoffs) -> Result<u64, StoreError> {
        let Cutoffs { first_hour, first_day, incidents_before } = cutoffs;
        let database = &self.database;
        database.call(WRITE_DEADLINE, || async move {
            let mut held = database.connection().await?;
            let client = held.connection();
            let mut removed = 0;
            for (sql, before) in [
                ("DELETE FROM hourly WHERE check_id = ANY($1) AND period < $2", first_hour),
                ("DELETE FROM daily WHERE check_id = ANY($1) AND period < $2", first_day),
                (
                    "DELETE FROM incidents WHERE check_id = ANY($1) AND ended IS NOT NULL AND ended < $2",
                    incidents_before,
                ),
            ] {
                let statement = client.prepare_cached(sql).await?;
                removed += client.execute(&statement, &[&check_ids, &before]).await?;
            }
            drop(held.finish());
            Ok(removed)
        })
    }

    fn check_ids(&mut self, instance: &str) -> Result<Vec<i64>, StoreError> {
        let database = &self.database;
        database.call(WRITE_DEADLINE, || async move {
            let mut held = database.connection().await?;
            let client = held.connection();
            let statement =
                client.prepare_cached("SELECT id FROM checks WHERE instance = $1").await?;
            let rows = client.query(&statement, &[&instance]).await?;
            let ids = rows.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?;
            drop(held.finish());
            Ok(ids)
        })
    }
}

impl PostgresReader {
    /// Runs `sql` with `params` on a pooled connection within `QUERY_DEADLINE`.
    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let database = &self.database;
        database.call(QUERY_DEADLINE, || async move {
            let mut held = database.connection().await?;
            let client = held.connection();
            let statement = client.prepare_cached(sql).await?;
            let rows = client.query(&statement, params).await?;
            drop(held.finish());
            Ok(rows)
        })
    }
}

impl Reader for PostgresReader {
    fn remembered(&self, instance: &str) -> Result<Vec<StoredCheck>, StoreError> {
        let mut checks: Vec<StoredCheck> = Vec::new();
        let mut position = HashMap::new();
        for row in self.query("SELECT * FROM checks WHERE instance = $1", &[&instance])? {
            position.insert(row.try_get::<_, i64>("id")?, checks.len());
            checks.push(StoredCheck {
                name: row.try_get("name")?,
                row: check_row(&row)?,
                runs: Vec::new(),
                latest_incident: None,
            });
        }
        let runs = self.query(
            "SELECT runs.* FROM runs JOIN checks ON checks.id = runs.check_id
             WHERE checks.instance = $1 ORDER BY runs.check_id, runs.seq",
            &[&instance],
        )?;
        for row in runs {
            if let Some(&index) = position.get(&row.try_get::<_, i64>("check_id")?) {
                checks[index].runs.push(run_row(&row)?);
            }
        }
        let latest = self.query(
            "SELECT DISTINCT ON (incidents.check_id) incidents.*, checks.name
             FROM incidents JOIN checks ON checks.id = incidents.check_id
             WHERE checks.instance = $1 ORDER BY incidents.check_id, incidents.id DESC",
            &[&instance],
        )?;
        for row in latest {
            if let Some(&index) = position.get(&row.try_get::<_, i64>("check_id")?) {
                checks[index].latest_incident = Some(incident_row(&row)?);
            }
        }
        for check in &mut checks {
            // Only the newest `keep` runs: a smaller `history` leaves older ones behind.
            let keep = check.row.keep as usize;
            if check.runs.len() > keep {
                check.runs.drain(..check.runs.len() - keep);
            }
        }
        Ok(checks)
    }

    fn rollup_sums(
        &self,
        instance: &str,
        names: &[&str],
        resolution: Resolution,
        first_period: i64,
    ) -> Result<HashMap<String, Rollup>, StoreError> {
        // sum() of a bigint is a numeric in PostgreSQL: back to bigint.
        let buckets: Vec<String> = (0..12).map(|index| format!("sum(b{index})::bigint")).collect();
        let sql = format!(
            "SELECT checks.name, sum(runs)::bigint, sum(failed)::bigint, sum(warned)::bigint,
               sum(sum_ms), min(min_ms), max(max_ms), {buckets}
             FROM {table} JOIN checks ON checks.id = {table}.check_id
             WHERE checks.instance = $1 AND {table}.period >= $2 AND checks.name = ANY($3)
             GROUP BY checks.name",
            table = resolution.table(),
            buckets = buckets.join(", "),
        );
        let rows = self.query(&sql, &[&instance, &first_period, &names])?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, rollup_at(row, 1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(StoreError::from)
    }

    fn rollups(
        &self,
        instance: &str,
        name: &str,
        resolution: Resolution,
        first: i64,
        last: i64,
    ) -> Result<Vec<(i64, Rollup)>, StoreError> {
        let sql = format!(
            "SELECT period, runs, failed, warned, sum_ms, min_ms, max_ms, {BUCKET_COLUMNS}
             FROM {table} JOIN checks ON checks.id = {table}.check_id
             WHERE checks.instance = $1 AND checks.name = $2 AND period BETWEEN $3 AND $4
             ORDER BY period",
            table = resolution.table()
        );
        let rows = self.query(&sql, &[&instance, &name, &first, &last])?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, rollup_at(row, 1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(StoreError::from)
    }

    fn runs_between(
        &self,
        instance: &str,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RunRow>, StoreError> {
        let rows = self.query(
            "SELECT runs.* FROM runs JOIN checks ON checks.id = runs.check_id
             WHERE checks.instance = $1 AND checks.name = $2 AND runs.at BETWEEN $3 AND $4
             ORDER BY runs.seq",
            &[&instance, &name, &micros(from), &micros(to)],
        )?;
        Ok(rows.iter().map(run_row).collect::<Result<_, _>>()?)
    }

    fn oldest_run(&self, instance: &str, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let rows = self.query(
            "SELECT min(runs.at) FROM runs JOIN checks ON checks.id = runs.check_id
             WHERE checks.instance = $1 AND checks.name = $2",
            &[&instance, &name],
        )?;
        let oldest: Option<i64> = match rows.first() {
            Some(row) => row.try_get(0)?,
            None => None,
        };
        Ok(oldest.map(from_micros))
    }

    fn incidents(
        &self,
        instance: &str,
        names: &[&str],
        limit: u32,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        let rows = self.query(
            "SELECT incidents.*, checks.name FROM incidents JOIN checks ON checks.id = incidents.check_id
             WHERE checks.instance = $1 AND (cardinality($3::text[]) = 0 OR checks.name = ANY($3))
             ORDER BY incidents.started DESC, incidents.id DESC LIMIT $2",
            &[&instance, &i64::from(limit), &names],
        )?;
        Ok(rows.iter().map(incident_row).collect::<Result<_, _>>()?)
    }

    fn pings(&self, instance: &str) -> Result<HashMap<String, PingState>, StoreError> {
        let rows = self.query("SELECT * FROM pings WHERE instance = $1", &[&instance])?;
        let mut pings = HashMap::new();
        for row in rows {
            let state = PingState {
                last_ping: row.try_get::<_, Option<i64>>("last_ping")?.map(from_micros),
                last_outcome: outcome_from_columns(
                    row.try_get::<_, Option<String>>("last_outcome")?.as_deref(),
                    row.try_get("exit_status")?,
                ),
                last_start: row.try_get::<_, Option<i64>>("last_start")?.map(from_micros),
                last_duration: row
                    .try_get::<_, Option<i64>>("last_duration_us")?
                    .map(|micros| Duration::from_micros(as_u64(micros))),
                body: row.try_get("body")?,
            };
            pings.insert(row.try_get("check_name")?, state);
        }
        Ok(pings)
    }
}

/// The outbox in a PostgreSQL store, on the store's pool.
pub struct PostgresOutbox {
    reader: PostgresReader,
    instance: String,
}

impl PostgresReader {
    pub fn outbox(&self, instance: &str) -> PostgresOutbox {
        PostgresOutbox {
            reader: PostgresReader { database: self.database.clone() },
            instance: instance.into(),
        }
    }
}

fn outbox_entry(row: &Row) -> Result<OutboxEntry, tokio_postgres::Error> {
    Ok(OutboxEntry {
        id: row.try_get(0)?,
        receiver: row.try_get(1)?,
        body: row.try_get(2)?,
        created: from_micros(row.try_get(3)?),
        attempts: as_u32(row.try_get(4)?),
        next_attempt: from_micros(row.try_get(5)?),
    })
}

impl Outbox for PostgresOutbox {
    fn put(&self, entry: &OutboxEntry) -> Result<(), StoreError> {
        self.reader.query(
            "INSERT INTO outbox (instance, id, receiver, body, created, attempts, next_attempt)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &self.instance,
                &entry.id,
                &entry.receiver,
                &entry.body,
                &micros(entry.created),
                &i64::from(entry.attempts),
                &micros(entry.next_attempt),
            ],
        )?;
        Ok(())
    }

    fn undelivered(&self, receiver: &str, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = self.reader.query(
            "SELECT id, receiver, body, created, attempts, next_attempt FROM outbox
             WHERE instance = $1 AND receiver = $2 AND delivered IS NULL AND given_up IS NULL
             ORDER BY created, id LIMIT $3",
            &[&self.instance, &receiver, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )?;
        Ok(rows.iter().map(outbox_entry).collect::<Result<_, _>>()?)
    }

    fn record(
        &self,
        id: &str,
        attempts: u32,
        outcome: &Attempted,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let attempts = i64::from(attempts);
        match outcome {
            Attempted::Delivered => self.reader.query(
                "UPDATE outbox SET delivered = $3, attempts = $4, last_error = NULL
                 WHERE instance = $1 AND id = $2",
                &[&self.instance, &id, &micros(now), &attempts],
            ),
            Attempted::RetryAt(next, error) => self.reader.query(
                "UPDATE outbox SET next_attempt = $3, attempts = $4, last_error = $5
                 WHERE instance = $1 AND id = $2",
                &[&self.instance, &id, &micros(*next), &attempts, error],
            ),
            Attempted::GivenUp(error) => self.reader.query(
                "UPDATE outbox SET given_up = $3, attempts = $4, last_error = $5
                 WHERE instance = $1 AND id = $2",
                &[&self.instance, &id, &micros(now), &attempts, error],
            ),
        }?;
        Ok(())
    }

    fn pending(&self) -> Result<HashMap<String, u64>, StoreError> {
        let rows = self.reader.query(
            "SELECT receiver, count(*) FROM outbox
             WHERE instance = $1 AND delivered IS NULL AND given_up IS NULL GROUP BY receiver",
            &[&self.instance],
        )?;
        rows.iter().map(|row| Ok((row.try_get(0)?, as_u64(row.try_get(1)?)))).collect()
    }

    fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let rows = self.reader.query(
            "WITH gone AS (DELETE FROM outbox WHERE instance = $1
               AND coalesce(delivered, given_up) < $2 RETURNING 1)
             SELECT count(*) FROM gone",
            &[&self.instance, &micros(before)],
        )?;
        let removed: i64 = match rows.first() {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        Ok(as_u64(removed))
    }

    fn alert_states(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = self.reader.query(
            "SELECT route, check_name, state FROM alerts WHERE instance = $1",
            &[&self.instance],
        )?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))).collect()
    }

    fn set_alert_state(
        &self,
        route: &str,
        check: &str,
        state: Option<&str>,
    ) -> Result<(), StoreError> {
        match state {
            Some(state) => self.reader.query(
                "INSERT INTO alerts (instance, route, check_name, state) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (instance, route, check_name) DO UPDATE SET state = excluded.state",
                &[&self.instance, &route, &check, &state],
            ),
            None => self.reader.query(
                "DELETE FROM alerts WHERE instance = $1 AND route = $2 AND check_name = $3",
                &[&self.instance, &route, &check],
            ),
        }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use healthd_models::HealthStatus;

    use super::*;

    fn run(seq: i64, keep: i64, status: HealthStatus) -> RunRow {
        RunRow {
            seq,
            slot: seq % keep,
            time: from_micros(seq * 1_000_000),
            observed: status,
            status,
            value: Some(1.0),
            output: None,
            duration: Duration::from_millis(2),
        }
    }

    fn rollup(runs: u64, min: f64, max: f64) -> Rollup {
        Rollup {
            runs,
            duration_sum_ms: min + max,
            duration_min_ms: min,
            duration_max_ms: max,
            ..Rollup::default()
        }
    }

    #[test]
    fn a_batch_that_grew_while_writes_failed_holds_each_row_once() {
        // Three runs of a check keeping two: slot 0 twice, the newer wins.
        // Two changes of one check; one period's roll-up added twice; the
        // check's row twice.
        let incident = |to, at| IncidentRow {
            check: "api".into(),
            from: None,
            to,
            started: from_micros(at),
            ended: None,
            output: None,
        };
        let batch = Batch {
            runs: vec![
                (7, run(0, 2, HealthStatus::Pass)),
                (7, run(1, 2, HealthStatus::Fail)),
                (7, run(2, 2, HealthStatus::Pass)),
            ],
            incidents: vec![
                (7, incident(HealthStatus::Fail, 10)),
                (7, incident(HealthStatus::Pass, 20)),
            ],
            rollups: vec![
                (Resolution::Hourly, 7, 100, rollup(2, 1.0, 5.0)),
                (Resolution::Hourly, 7, 100, rollup(1, 0.5, 2.0)),
                (Resolution::Daily, 7, 4, rollup(3, 0.5, 5.0)),
            ],
            checks: vec![
                CheckRow { id: 7, next_seq: 2, ..CheckRow::default() },
                CheckRow { id: 7, next_seq: 3, ..CheckRow::default() },
            ],
            ..Batch::default()
        };

        let columns = Columns::of(&batch);

        assert_eq!(columns.runs.slot, vec![0, 1]);
        assert_eq!(columns.runs.seq, vec![2, 1]);
        // The first change ends the stored one; the second ends the first.
        assert_eq!(columns.ended, (vec![7], vec![10]));
        assert_eq!(columns.incidents.started, vec![10, 20]);
        assert_eq!(columns.incidents.ended, vec![Some(20), None]);
        assert_eq!(columns.hourly.period, vec![100]);
        assert_eq!(columns.hourly.counts[0], vec![3]);
        assert_eq!(columns.hourly.durations[1], vec![0.5]);
        assert_eq!(columns.hourly.durations[2], vec![5.0]);
        assert_eq!(columns.daily.counts[0], vec![3]);
        assert_eq!(columns.checks.id, vec![7]);
        assert_eq!(columns.checks.next_seq, vec![3]);
    }
}
