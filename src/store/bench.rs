//! The store's year: `cargo xtask bench --scale` runs this (release,
//! `--ignored`) and reads its MEASURED lines. A year of roll-ups for
//! 10,000 checks is seeded through the store's own write path (the queue
//! and the writer, as the engine feeds them): a run an hour for the last
//! 30 days (the hourly retention) and a run a day before that, then
//! retention; then the 365-day uptime of one check and of a page of 100
//! are timed, and the file's size is read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use healthd_models::HealthStatus;

use crate::config::{StorageBackend, StorageSettings};
use crate::engine::state::FinishedRun;
use crate::store::{report, Store};

fn checks() -> usize {
    std::env::var("HEALTHD_BENCH_CHECKS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000)
}

#[test]
#[ignore = "a benchmark: cargo xtask bench --scale runs it in release"]
fn a_year_of_roll_ups() {
    let checks = checks();
    let path = std::env::temp_dir().join(format!("healthd-year-{}.db", std::process::id()));
    let settings = StorageSettings {
        backend: StorageBackend::Sqlite { path: path.clone() },
        instance: "bench".into(),
        hourly_retention: Duration::from_secs(30 * 86_400),
        daily_retention: Duration::from_secs(400 * 86_400),
        incident_retention: Duration::from_secs(400 * 86_400),
        queue: 100_000,
    };
    let now = Utc::now();
    let store = Store::open(&settings).unwrap();
    let names: Vec<Arc<str>> =
        (0..checks).map(|index| Arc::from(format!("tcp-{index:05}"))).collect();
    let seeding = Instant::now();
    let mut runs = 0u64;
    // Oldest first, as time goes: a run a day for 335 days, then a run an hour.
    let times = (30..365)
        .rev()
        .map(|days| now - TimeDelta::days(days))
        .chain((0..30 * 24).rev().map(|hours| now - TimeDelta::hours(hours)));
    for (step, time) in times.enumerate() {
        for (index, name) in names.iter().enumerate() {
            // One check in 50 fails one run in 100: some incidents too.
            let failing = index % 50 == 0 && step % 100 == 0;
            let status = if failing { HealthStatus::Fail } else { HealthStatus::Pass };
            store.record_waiting(FinishedRun {
                check: name.clone(),
                time,
                observed: status,
                status,
                previous: Some(if index % 50 == 0 && step % 100 == 1 {
                    HealthStatus::Fail
                } else {
                    HealthStatus::Pass
                }),
                value: Some(1.0 + (step % 7) as f64),
                output: failing.then(|| Arc::from("connection refused")),
                duration: Duration::from_micros(500 + (step as u64 % 40) * 100),
                keep: 120,
            });
            runs += 1;
        }
    }
    assert!(store.flush(Duration::from_secs(600)));
    let seeded = seeding.elapsed();
    assert!(store.prune(Duration::from_secs(600)));
    println!(
        "MEASURED seeded {runs} runs for {checks} checks in {:.1} s ({:.0} runs/s through the queue and writer)",
        seeded.as_secs_f64(),
        runs as f64 / seeded.as_secs_f64()
    );

    let time = |names: &[&str]| {
        let mut took: Vec<Duration> = (0..21)
            .map(|_| {
                let started = Instant::now();
                let uptime = report::uptime(&store, names).unwrap();
                assert_eq!(uptime.len(), names.len());
                assert!(uptime[0].windows[4].runs > 1_000, "{:?}", uptime[0]);
                started.elapsed()
            })
            .collect();
        took.sort();
        took[took.len() / 2]
    };
    let one = time(&["tcp-00042"]);
    // A page from the middle of the estate.
    let first = (checks / 2).min(checks.saturating_sub(100));
    let page: Vec<String> =
        (first..checks.min(first + 100)).map(|index| format!("tcp-{index:05}")).collect();
    let page: Vec<&str> = page.iter().map(String::as_str).collect();
    let hundred = time(&page);
    println!("MEASURED uptime over 365 days (5 windows): one check {:.2} ms, a page of 100 checks {:.2} ms (median of 21)", one.as_secs_f64() * 1e3, hundred.as_secs_f64() * 1e3);

    drop(store);
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    let bytes = std::fs::metadata(&path).unwrap().len();
    let count = |table: &str| -> i64 {
        connection
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))
            .unwrap()
    };
    println!(
        "MEASURED a simulated year for {checks} checks: file {:.1} MiB ({} bytes per check; {:.0} bytes per check per day of the year): {} runs kept, {} hourly, {} daily roll-ups, {} incidents",
        bytes as f64 / 1_048_576.0,
        bytes / checks as u64,
        bytes as f64 / checks as f64 / 365.0,
        count("runs"),
        count("hourly"),
        count("daily"),
        count("incidents")
    );
    drop(connection);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
