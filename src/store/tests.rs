//! The store against a real SQLite file, with runs recorded at times the
//! test chooses and a clock it controls.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use healthd_models::{HealthStatus, SeriesSource, UptimeWindowName};
use HealthStatus::{Fail, Pass, Warn};

use crate::config::{StorageBackend, StorageSettings};
use crate::engine::state::FinishedRun;
use crate::store::{report, Store, StoreError};

const FLUSH: Duration = Duration::from_secs(10);

/// A fresh file under the temp dir, removed (with its WAL) when dropped.
struct TempStore(PathBuf);

impl TempStore {
    fn new() -> TempStore {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "healthd-store-test-{}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        TempStore(path)
    }

    fn settings(&self) -> StorageSettings {
        StorageSettings {
            backend: StorageBackend::Sqlite { path: self.0.clone() },
            instance: "test".into(),
            hourly_retention: Duration::from_secs(30 * 86_400),
            daily_retention: Duration::from_secs(400 * 86_400),
            incident_retention: Duration::from_secs(400 * 86_400),
            queue: 10_000,
        }
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// A clock the test sets.
#[derive(Clone)]
struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    fn at(time: DateTime<Utc>) -> TestClock {
        TestClock(Arc::new(Mutex::new(time)))
    }

    fn open(&self, file: &TempStore) -> Store {
        let clock = self.0.clone();
        Store::open_with_clock(&file.settings(), Arc::new(move || *clock.lock().unwrap()))
            .expect("the store opens")
    }
}

/// 2026-06-15 00:00 UTC: day 20,619 since the epoch.
fn day_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 15, 0, 0, 0).unwrap()
}

/// Records one run, as a check's task hands it over.
fn record(
    store: &Store,
    check: &str,
    time: DateTime<Utc>,
    previous: Option<HealthStatus>,
    status: HealthStatus,
    millis: u64,
) {
    store.sink().finished(FinishedRun {
        check: Arc::from(check),
        time,
        observed: status,
        status,
        previous,
        value: Some(millis as f64),
        output: (status != Pass).then(|| Arc::from("connection refused")),
        duration: Duration::from_millis(millis),
        keep: 10,
    });
}

/// Records `statuses` one a minute from `start`, each after the one before.
fn record_minutes(
    store: &Store,
    check: &str,
    start: DateTime<Utc>,
    previous: &mut Option<HealthStatus>,
    statuses: &[HealthStatus],
    millis: u64,
) {
    for (minute, status) in statuses.iter().enumerate() {
        let time = start + TimeDelta::minutes(minute as i64);
        record(store, check, time, *previous, *status, millis);
        *previous = Some(*status);
    }
}

#[test]
fn uptime_windows_sum_the_runs_recorded_at_the_times_the_test_chose() {
    let file = TempStore::new();
    let now = day_start() + TimeDelta::hours(12);
    let clock = TestClock::at(now);
    let store = clock.open(&file);
    let mut previous = None;
    // 40 days ago: 10 passes (only in the 90- and 365-day windows).
    record_minutes(&store, "db", now - TimeDelta::days(40), &mut previous, &[Pass; 10], 2);
    // 3 days ago: 4 failures, 6 passes (in 7 days and longer).
    let three_days = [[Fail; 4].as_slice(), [Pass; 6].as_slice()].concat();
    record_minutes(&store, "db", now - TimeDelta::days(3), &mut previous, &three_days, 30);
    // 2 hours ago: 5 passes and a warning (in every window).
    let recent = [[Pass; 5].as_slice(), [Warn].as_slice()].concat();
    record_minutes(&store, "db", now - TimeDelta::hours(2), &mut previous, &recent, 3);
    assert!(store.flush(FLUSH));

    let uptime = report::uptime(&store, &["db", "never-ran"]).unwrap();
    let counts: Vec<_> = uptime[0]
        .windows
        .iter()
        .map(|window| (window.window, window.runs, window.failed_runs, window.warned_runs))
        .collect();
    assert_eq!(
        counts,
        [
            (UptimeWindowName::X24h, 6, 0, 1),
            (UptimeWindowName::X7d, 16, 4, 1),
            (UptimeWindowName::X30d, 16, 4, 1),
            (UptimeWindowName::X90d, 26, 4, 1),
            (UptimeWindowName::X365d, 26, 4, 1),
        ]
    );
    let week = &uptime[0].windows[1];
    assert_eq!(week.uptime, Some(12.0 / 16.0));
    // 6 runs of 3 ms and 10 of 30 ms: the median in the (1, 5] ms bucket
    // would need 8 runs; it is in (25, 50] ms, kept at the most seen, 30.
    assert_eq!(week.p99_ms, Some(30.0));
    assert!(week.p50_ms.unwrap() > 3.0 && week.p50_ms.unwrap() <= 30.0, "{week:?}");
    let none = &uptime[1].windows[0];
    assert_eq!((none.runs, none.uptime, none.p50_ms), (0, None, None));
}

#[test]
fn a_series_is_served_from_runs_then_hourly_then_daily_roll_ups() {
    let file = TempStore::new();
    let now = day_start() + TimeDelta::hours(12);
    let clock = TestClock::at(now);
    let store = clock.open(&file);
    let mut previous = None;
    record_minutes(&store, "db", now - TimeDelta::days(45), &mut previous, &[Pass; 3], 5);
    // Then two hours of runs, a minute apart, of which the ring keeps the last 10.
    let two_hours: Vec<_> =
        (0..120).map(|minute| if minute % 30 == 0 { Fail } else { Pass }).collect();
    record_minutes(&store, "db", now - TimeDelta::hours(2), &mut previous, &two_hours, 5);
    assert!(store.flush(FLUSH));

    let last_minutes =
        report::series(&store, "db", now - TimeDelta::minutes(9), now, None).unwrap();
    assert_eq!(last_minutes.source, SeriesSource::Runs);
    assert_eq!(last_minutes.points.iter().map(|point| point.runs).sum::<u64>(), 9);

    let day = report::series(&store, "db", now - TimeDelta::hours(24), now, Some(3_600)).unwrap();
    assert_eq!(day.source, SeriesSource::Hourly);
    assert_eq!(day.step_seconds, 3_600);
    let per_hour: Vec<_> = day.points.iter().map(|point| (point.runs, point.failed_runs)).collect();
    assert_eq!(per_hour, [(60, 2), (60, 2)]);
    assert_eq!(day.points[0].time, now - TimeDelta::hours(2));

    let year = report::series(&store, "db", now - TimeDelta::days(365), now, None).unwrap();
    assert_eq!(year.source, SeriesSource::Daily);
    assert_eq!(year.step_seconds % 86_400, 0);
    assert_eq!(year.points.iter().map(|point| point.runs).sum::<u64>(), 123);
}

#[test]
fn a_reopened_store_gives_back_the_ring_totals_status_and_since_when() {
    let file = TempStore::new();
    let clock = TestClock::at(day_start());
    let store = clock.open(&file);
    let mut previous = None;
    let statuses = [[Pass; 8].as_slice(), [Fail; 5].as_slice()].concat();
    record_minutes(&store, "db", day_start(), &mut previous, &statuses, 4);
    assert!(store.close(FLUSH));
    drop(store);

    let again = clock.open(&file);
    let remembered = again.remembered().unwrap().remove("db").unwrap();
    assert_eq!(remembered.runs.len(), 10, "the ring keeps 10");
    assert_eq!(remembered.runs.first().unwrap().time, day_start() + TimeDelta::minutes(3));
    assert_eq!(remembered.runs.last().unwrap().status, Fail);
    assert_eq!((remembered.runs_total, remembered.failed_runs_total), (13, 5));
    assert_eq!(remembered.status, Some((Fail, day_start() + TimeDelta::minutes(8))));
    assert_eq!((remembered.consecutive_failures, remembered.consecutive_successes), (5, 0));
    let incidents = report::incidents(&again, &["db"], 10).unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!((incidents[0].from, incidents[0].to), (Some(Pass), Fail));
}

#[test]
fn a_reopened_store_gives_back_what_each_heartbeat_s_pings_said_the_latest_of_each() {
    use crate::checks::{Outcome, PingState};
    let file = TempStore::new();
    let clock = TestClock::at(day_start());
    let store = clock.open(&file);
    let backup: Arc<str> = Arc::from("backup");
    let nightly: Arc<str> = Arc::from("nightly");
    let at = |seconds| day_start() + TimeDelta::seconds(seconds);
    let started = PingState { last_start: Some(at(5)), ..PingState::default() };
    let failed = PingState {
        last_ping: Some(at(9)),
        last_outcome: Some(Outcome::Exit(3)),
        last_start: None,
        last_duration: Some(Duration::from_millis(4_250)),
        body: Some("pg_dump: disk full".into()),
    };
    let succeeded = PingState {
        last_ping: Some(at(7)),
        last_outcome: Some(Outcome::Success),
        ..PingState::default()
    };
    store.save_pings(&backup, started);
    store.save_pings(&nightly, succeeded.clone());
    store.save_pings(&backup, failed.clone());
    assert!(store.close(FLUSH));
    drop(store);

    let again = clock.open(&file);
    let pings = again.pings().unwrap();
    assert_eq!(pings.len(), 2);
    assert_eq!(pings["backup"], failed);
    assert_eq!(pings["nightly"], succeeded);
    // Another instance in the same file has none.
    let other = StorageSettings { instance: "other".into(), ..file.settings() };
    assert!(Store::open(&other).unwrap().pings().unwrap().is_empty());
}

#[test]
fn runs_written_before_a_crash_count_in_the_totals_and_roll_ups_after_it() {
    let file = TempStore::new();
    let clock = TestClock::at(day_start() + TimeDelta::hours(1));
    let crashed = clock.open(&file);
    let mut previous = None;
    record_minutes(&crashed, "db", day_start(), &mut previous, &[Pass, Pass, Fail, Fail], 4);
    // Written in a batch, but the roll-ups (every minute) never were: the
    // writer is abandoned as a kill -9 would leave it.
    let written = std::time::Instant::now();
    while crashed.stats().written.load(Ordering::Relaxed) < 4 {
        assert!(written.elapsed() < FLUSH, "the runs are written within a batch");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::mem::forget(crashed);

    let store = clock.open(&file);
    let remembered = store.remembered().unwrap().remove("db").unwrap();
    assert_eq!((remembered.runs_total, remembered.failed_runs_total), (4, 2));
    assert_eq!(remembered.consecutive_failures, 2);
    // The next run rebuilds the unrolled ones into this hour's sums.
    record(&store, "db", day_start() + TimeDelta::minutes(4), previous, Pass, 4);
    assert!(store.flush(FLUSH));
    let day = &report::uptime(&store, &["db"]).unwrap()[0].windows[0];
    assert_eq!((day.runs, day.failed_runs), (5, 2));
}

#[test]
fn retention_removes_old_roll_ups_and_ended_incidents_and_keeps_the_rest() {
    let file = TempStore::new();
    let now = day_start();
    let clock = TestClock::at(now);
    let store = clock.open(&file);
    let mut previous = None;
    // 500 days ago a failure and its recovery: the failure's incident ended then.
    record_minutes(&store, "db", now - TimeDelta::days(500), &mut previous, &[Fail, Pass], 4);
    record_minutes(&store, "db", now - TimeDelta::days(40), &mut previous, &[Pass], 4);
    record_minutes(&store, "db", now - TimeDelta::days(2), &mut previous, &[Fail], 4);
    assert!(store.flush(FLUSH));
    assert_eq!(report::incidents(&store, &["db"], 10).unwrap().len(), 3);

    assert!(store.prune(FLUSH));
    let incidents = report::incidents(&store, &["db"], 10).unwrap();
    let kept: Vec<_> = incidents.iter().map(|incident| (incident.from, incident.to)).collect();
    // The recovery 500 days ago lasted until 2 days ago: it ended within retention.
    assert_eq!(kept, [(Some(Pass), Fail), (Some(Fail), Pass)]);
    // 40 days ago is past the hourly retention (30 days) and kept daily;
    // 500 days ago is past both.
    let file = rusqlite::Connection::open(&file.0).unwrap();
    let periods = |table: &str| -> Vec<i64> {
        let mut statement =
            file.prepare(&format!("SELECT period FROM {table} ORDER BY period")).unwrap();
        statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
    };
    let day = now.timestamp() / 86_400;
    assert_eq!(periods("hourly"), [(now - TimeDelta::days(2)).timestamp() / 3_600]);
    assert_eq!(periods("daily"), [day - 40, day - 2]);
}

fn sha(path: &std::path::Path) -> String {
    crate::base::secret::sha256_hex(&std::fs::read(path).unwrap())
}

#[test]
fn a_file_that_is_not_a_healthd_store_or_is_newer_is_refused_and_left_as_it_was() {
    let refusal = |file: &TempStore| match Store::open(&file.settings()) {
        Err(StoreError::Refused(reason)) => reason,
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("opened {}", file.0.display()),
    };
    let text = TempStore::new();
    std::fs::write(&text.0, "name,value\nx,1\n").unwrap();
    let before = sha(&text.0);
    let reason = refusal(&text);
    assert!(
        reason.contains(&text.0.display().to_string()) && reason.contains("not a healthd store"),
        "{reason}"
    );
    assert_eq!(sha(&text.0), before);

    let other = TempStore::new();
    rusqlite::Connection::open(&other.0).unwrap().execute_batch("CREATE TABLE t (x);").unwrap();
    let before = sha(&other.0);
    let reason = refusal(&other);
    assert!(reason.contains("not a healthd store") && reason.contains("1 tables"), "{reason}");
    assert_eq!(sha(&other.0), before);

    let newer = TempStore::new();
    drop(Store::open(&newer.settings()).unwrap());
    {
        let connection = rusqlite::Connection::open(&newer.0).unwrap();
        connection
            .execute_batch(
                "INSERT INTO healthd_migrations (version, name, applied_on, checksum)
                 VALUES (99, 'future', '2030-01-01', '0');
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .unwrap();
    }
    let before = sha(&newer.0);
    let reason = refusal(&newer);
    assert!(reason.contains("schema is version 99, newer than this healthd knows (4)"), "{reason}");
    assert_eq!(sha(&newer.0), before);
}

#[test]
fn pings_that_do_not_fit_the_queue_are_dropped_and_counted_like_runs() {
    use crate::checks::PingState;
    use crate::store::{offer, Command, StoreStats};
    let (queue, _held) = std::sync::mpsc::sync_channel(1);
    let stats = StoreStats::default();
    let check: Arc<str> = Arc::from("backup");
    offer(&queue, &stats, Command::Pings(check.clone(), PingState::default()));
    offer(&queue, &stats, Command::Pings(check, PingState::default()));
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
    // The backlog counts runs only.
    assert_eq!(stats.backlog.load(Ordering::Relaxed), 0);
}
