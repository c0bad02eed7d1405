//! The outbox: every notification from its creation until it is delivered
//! or given up, and each route's alerts while they are pending or firing,
//! so that a restart sends what was pending, sends nothing twice and keeps
//! firing alerts firing. Small and rare next to the runs: each call is a
//! statement or two on a connection of its own, made from tokio's blocking
//! pool, never on a check's or a probe's path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use crate::store::sqlite::{follow, Generation, Opened};
use crate::store::{as_u32, as_u64, from_micros, micros, StoreError};

/// One notification on its way to one receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// The notification's id: its idempotency key on every attempt.
    pub id: String,
    pub receiver: String,
    /// The notification, as JSON.
    pub body: String,
    pub created: DateTime<Utc>,
    pub attempts: u32,
    pub next_attempt: DateTime<Utc>,
}

/// What happened to an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempted {
    Delivered,
    /// Another attempt at this time.
    RetryAt(DateTime<Utc>, String),
    GivenUp(String),
}

/// The outbox of one instance.
pub trait Outbox: Send + Sync {
    fn put(&self, entry: &OutboxEntry) -> Result<(), StoreError>;
    /// The first `limit` undelivered entries of `receiver`, oldest (by
    /// creation) first, due or not: the dispatcher keeps each route's in order.
    fn undelivered(&self, receiver: &str, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;
    fn record(
        &self,
        id: &str,
        attempts: u32,
        outcome: &Attempted,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Undelivered entries per receiver.
    fn pending(&self) -> Result<HashMap<String, u64>, StoreError>;
    /// Removes delivered and given-up entries finished before `before`.
    fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Each (route, check)'s alert state, as the alerts layer wrote it.
    fn alert_states(&self) -> Result<Vec<(String, String, String)>, StoreError>;
    /// Sets a (route, check)'s state, or removes it.
    fn set_alert_state(
        &self,
        route: &str,
        check: &str,
        state: Option<&str>,
    ) -> Result<(), StoreError>;
}

/// The outbox in a SQLite store: a connection of its own (WAL lets it
/// write between the writer thread's batches; the busy timeout waits for
/// one).
pub struct SqliteOutbox {
    connection: Mutex<Opened>,
    instance: String,
    path: PathBuf,
    /// Opened again when the store's writer opens the file again.
    generation: Arc<Generation>,
}

impl SqliteOutbox {
    /// On a store `sqlite::open` has opened and migrated, following its
    /// writer's `generation`.
    pub fn open(
        path: &Path,
        instance: &str,
        generation: Arc<Generation>,
    ) -> Result<SqliteOutbox, StoreError> {
        let connection = Opened { generation: generation.now(), connection: connect(path)? };
        Ok(SqliteOutbox {
            connection: Mutex::new(connection),
            instance: instance.into(),
            path: path.to_path_buf(),
            generation,
        })
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&Connection, &str) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut opened = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        follow(&mut opened, &self.generation, || connect(&self.path));
        Ok(work(&opened.connection, &self.instance)?)
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(super::sqlite::BUSY_TIMEOUT)?;
    connection.execute_batch("PRAGMA synchronous = NORMAL;")?;
    Ok(connection)
}

fn entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    Ok(OutboxEntry {
        id: row.get(0)?,
        receiver: row.get(1)?,
        body: row.get(2)?,
        created: from_micros(row.get(3)?),
        attempts: as_u32(row.get(4)?),
        next_attempt: from_micros(row.get(5)?),
    })
}

impl Outbox for SqliteOutbox {
    fn put(&self, entry: &OutboxEntry) -> Result<(), StoreError> {
        self.with(|connection, instance| {
            connection.execute(
                "INSERT OR IGNORE INTO outbox (instance, id, receiver, body, created, attempts, next_attempt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    instance,
                    entry.id,
                    entry.receiver,
                    entry.body,
                    micros(entry.created),
                    i64::from(entry.attempts),
                    micros(entry.next_attempt)
                ],
            )?;
            Ok(())
        })
    }

    fn undelivered(&self, receiver: &str, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with(|connection, instance| {
            let mut statement = connection.prepare_cached(
                "SELECT id, receiver, body, created, attempts, next_attempt FROM outbox
                 WHERE instance = ?1 AND receiver = ?2 AND delivered IS NULL AND given_up IS NULL
                 ORDER BY created, id LIMIT ?3",
            )?;
            let rows = statement.query_map(
                params![instance, receiver, i64::try_from(limit).unwrap_or(i64::MAX)],
                entry,
            )?;
            rows.collect()
        })
    }

    fn record(
        &self,
        id: &str,
        attempts: u32,
        outcome: &Attempted,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.with(|connection, instance| {
            let attempts = i64::from(attempts);
            match outcome {
                Attempted::Delivered => connection.execute(
                    "UPDATE outbox SET delivered = ?3, attempts = ?4, last_error = NULL
                     WHERE instance = ?1 AND id = ?2",
                    params![instance, id, micros(now), attempts],
                ),
                Attempted::RetryAt(next, error) => connection.execute(
                    "UPDATE outbox SET next_attempt = ?3, attempts = ?4, last_error = ?5
                     WHERE instance = ?1 AND id = ?2",
                    params![instance, id, micros(*next), attempts, error],
                ),
                Attempted::GivenUp(error) => connection.execute(
                    "UPDATE outbox SET given_up = ?3, attempts = ?4, last_error = ?5
                     WHERE instance = ?1 AND id = ?2",
                    params![instance, id, micros(now), attempts, error],
                ),
            }?;
            Ok(())
        })
    }

    fn pending(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.with(|connection, instance| {
            let mut statement = connection.prepare_cached(
                "SELECT receiver, count(*) FROM outbox
                 WHERE instance = ?1 AND delivered IS NULL AND given_up IS NULL GROUP BY receiver",
            )?;
            let rows = statement.query_map(params![instance], |row| {
                Ok((row.get::<_, String>(0)?, as_u64(row.get(1)?)))
            })?;
            rows.collect()
        })
    }

    fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.with(|connection, instance| {
            let removed = connection.execute(
                "DELETE FROM outbox WHERE instance = ?1 AND coalesce(delivered, given_up) < ?2",
                params![instance, micros(before)],
            )?;
            Ok(u64::try_from(removed).unwrap_or(0))
        })
    }

    fn alert_states(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.with(|connection, instance| {
            let mut statement = connection.prepare_cached(
                "SELECT route, check_name, state FROM alerts WHERE instance = ?1",
            )?;
            let rows = statement
                .query_map(params![instance], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
            rows.collect()
        })
    }

    fn set_alert_state(
        &self,
        route: &str,
        check: &str,
        state: Option<&str>,
    ) -> Result<(), StoreError> {
        self.with(|connection, instance| {
            match state {
                Some(state) => connection.execute(
                    "INSERT INTO alerts (instance, route, check_name, state) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (instance, route, check_name) DO UPDATE SET state = excluded.state",
                    params![instance, route, check, state],
                ),
                None => connection.execute(
                    "DELETE FROM alerts WHERE instance = ?1 AND route = ?2 AND check_name = ?3",
                    params![instance, route, check],
                ),
            }?;
            Ok(())
        })
    }
}

/// The outbox without a store: the same delivery, retries and alert
/// states, lost on a restart.
#[derive(Default)]
pub struct MemoryOutbox {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    /// Undelivered entries by id.
    entries: HashMap<String, OutboxEntry>,
    /// Delivered or given-up ids, with when: so that a second `put` of one
    /// is ignored, as the store's primary key does.
    finished: HashMap<String, DateTime<Utc>>,
    alerts: HashMap<(String, String), String>,
}

impl MemoryOutbox {
    fn with<T>(&self, work: impl FnOnce(&mut MemoryInner) -> T) -> Result<T, StoreError> {
        Ok(work(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner())))
    }
}

impl Outbox for MemoryOutbox {
    fn put(&self, entry: &OutboxEntry) -> Result<(), StoreError> {
        self.with(|inner| {
            if !inner.finished.contains_key(&entry.id) {
                inner.entries.entry(entry.id.clone()).or_insert_with(|| entry.clone());
            }
        })
    }

    fn undelivered(&self, receiver: &str, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with(|inner| {
            let mut undelivered: Vec<OutboxEntry> = inner
                .entries
                .values()
                .filter(|entry| entry.receiver == receiver)
                .cloned()
                .collect();
            undelivered.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
            undelivered.truncate(limit);
            undelivered
        })
    }

    fn record(
        &self,
        id: &str,
        attempts: u32,
        outcome: &Attempted,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.with(|inner| match outcome {
            Attempted::RetryAt(next, _) => {
                if let Some(entry) = inner.entries.get_mut(id) {
                    entry.attempts = attempts;
                    entry.next_attempt = *next;
                }
            }
            Attempted::Delivered | Attempted::GivenUp(_) => {
                if inner.entries.remove(id).is_some() {
                    inner.finished.insert(id.to_string(), now);
                }
            }
        })
    }

    fn pending(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.with(|inner| {
            let mut pending = HashMap::new();
            for entry in inner.entries.values() {
                *pending.entry(entry.receiver.clone()).or_insert(0) += 1;
            }
            pending
        })
    }

    fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.with(|inner| {
            let count = inner.finished.len();
            inner.finished.retain(|_, finished| *finished >= before);
            (count - inner.finished.len()) as u64
        })
    }

    fn alert_states(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.with(|inner| {
            inner
                .alerts
                .iter()
                .map(|((route, check), state)| (route.clone(), check.clone(), state.clone()))
                .collect()
        })
    }

    fn set_alert_state(
        &self,
        route: &str,
        check: &str,
        state: Option<&str>,
    ) -> Result<(), StoreError> {
        self.with(|inner| {
            let key = (route.to_string(), check.to_string());
            match state {
                Some(state) => inner.alerts.insert(key, state.to_string()),
                None => inner.alerts.remove(&key),
            };
        })
    }
}
