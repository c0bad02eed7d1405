//! The SQLite store under the real binary: a restart shows the same
//! history, statusSince, uptime and incidents; kill -9 during heavy
//! writing loses at most the last second and never corrupts the file; a
//! file that is not a store is refused untouched; a locked store slows no
//! probe and no check, and writing resumes by itself.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::app::{metric, spawn_binary, RunningBinary};

const DEADLINE: Duration = Duration::from_secs(30);

/// A store file under the temp dir, removed with its WAL when dropped.
struct StoreFile(PathBuf);

impl StoreFile {
    fn new() -> StoreFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        StoreFile(std::env::temp_dir().join(format!(
            "healthd-store-{}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for StoreFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// A port that accepts connections and closes them, for the `up` checks.
fn accepting() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let accepter = listener.try_clone().unwrap();
    // Blocked in accept until the test binary ends; never a full backlog.
    std::thread::spawn(move || accepter.incoming().for_each(drop));
    listener
}

/// A config with a store, `up` checks against `listener` and one `down`
/// check against a closed port, all every `interval`.
fn config(store: &Path, listener: &TcpListener, ups: usize, interval: &str) -> String {
    let address = listener.local_addr().unwrap();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access]\ndetails = \"always\"\n[storage]\npath = \"{}\"\nqueue = 100\n\
         [defaults]\ninterval = \"{interval}\"\ntimeout = \"80ms\"\nretries = 0\n\
         [[checks]]\nname = \"down\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n",
        store.display()
    );
    for index in 0..ups {
        text.push_str(&format!(
            "[[checks]]\nname = \"up-{index}\"\nkind = \"tcp\"\naddress = \"{address}\"\n"
        ));
    }
    text
}

async fn get_json(binary: &RunningBinary, path: &str) -> Value {
    let response = reqwest::get(format!("{}{path}", binary.base())).await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

async fn metrics(binary: &RunningBinary) -> String {
    reqwest::get(format!("{}/metrics", binary.base())).await.unwrap().text().await.unwrap()
}

/// Polls `/metrics` until `series` satisfies `wanted`.
async fn wait_for_metric(
    binary: &RunningBinary,
    series: &str,
    wanted: impl Fn(f64) -> bool,
) -> f64 {
    let started = Instant::now();
    loop {
        if let Some(value) = metric(&metrics(binary).await, series).filter(|value| wanted(*value)) {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "{series} never as wanted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a check's history until it holds more than `runs` entries.
async fn history_beyond(binary: &RunningBinary, check: &str, runs: usize) -> Value {
    let started = Instant::now();
    loop {
        let history = get_json(binary, &format!("/health/checks/{check}/history")).await;
        if history["entries"].as_array().unwrap().len() > runs {
            return history;
        }
        assert!(started.elapsed() < DEADLINE, "{check} has no run beyond {runs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop(mut binary: RunningBinary) -> String {
    binary.signal(libc::SIGTERM);
    let status = binary.wait_for_exit(DEADLINE).await;
    assert!(status.success(), "{status}\n{}", binary.stdout());
    binary.stdout()
}

#[tokio::test]
async fn a_restart_shows_the_same_history_status_since_uptime_and_incidents() {
    let store = StoreFile::new();
    let listener = accepting();
    let text = config(&store.0, &listener, 1, "200ms");
    let binary = spawn_binary(&text, &[], &[]).await;
    history_beyond(&binary, "down", 5).await;
    let before = get_json(&binary, "/health/checks/down/history").await;
    let incidents_before = get_json(&binary, "/health/checks/down/incidents").await;
    stop(binary).await;

    let binary = spawn_binary(&text, &[], &[]).await;
    let kept = before["entries"].as_array().unwrap().len();
    // Once a fresh run is in, the runs from before are the ring's first.
    let after = history_beyond(&binary, "down", kept).await;
    assert_eq!(
        after["entries"].as_array().unwrap()[..kept],
        before["entries"].as_array().unwrap()[..]
    );
    assert_eq!(after["statusSince"], before["statusSince"]);
    let (runs_before, runs_after) = (
        before["uptime"]["runsSinceStart"].as_u64().unwrap(),
        after["uptime"]["runsSinceStart"].as_u64().unwrap(),
    );
    assert!(runs_after > runs_before, "{runs_before} then {runs_after}");
    assert_eq!(after["uptime"]["sinceStart"], 0.0);
    // The failure is neither hidden nor announced again: one incident, the same.
    let incidents = get_json(&binary, "/health/checks/down/incidents").await;
    assert_eq!(incidents, incidents_before);
    assert_eq!(incidents["incidents"].as_array().unwrap().len(), 1);
    let uptime = get_json(&binary, "/health/checks/up-0/uptime").await;
    let day = &uptime["windows"][0];
    assert!(day["runs"].as_u64().unwrap() >= runs_before, "{uptime}");
    assert_eq!(day["uptime"], 1.0);
    let log = stop(binary).await;
    assert!(!log.contains("check status changed"), "announced again:\n{log}");
}

#[tokio::test]
async fn kill_9_during_heavy_writing_loses_at_most_the_last_second_and_never_corrupts_the_file() {
    let store = StoreFile::new();
    let listener = accepting();
    // 41 checks every 100 ms: about 400 runs a second.
    let text = config(&store.0, &listener, 40, "100ms").replace("queue = 100\n", "");
    for round in 0..8u64 {
        let mut binary = spawn_binary(&text, &[], &[]).await;
        wait_for_metric(&binary, "healthd_store_written_total", |written| written > 0.0).await;
        tokio::time::sleep(Duration::from_millis(300 + round * 150)).await;
        let killed_at = chrono::Utc::now();
        binary.signal(libc::SIGKILL);
        binary.wait_for_exit(DEADLINE).await;
        let file = rusqlite::Connection::open(&store.0).unwrap();
        let integrity: String =
            file.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
        assert_eq!(integrity, "ok", "round {round}");
        let newest: i64 = file.query_row("SELECT max(at) FROM runs", [], |row| row.get(0)).unwrap();
        let lost = killed_at.timestamp_micros() - newest;
        assert!(
            lost <= 1_000_000,
            "round {round}: the newest run kept is {lost} µs older than the kill"
        );
        println!(
            "MEASURED kill -9 round {round}: newest run kept {} ms before the kill",
            lost / 1000
        );
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_store_stops_start_up_and_is_left_as_it_was() {
    let store = StoreFile::new();
    std::fs::write(&store.0, "this is someone's notes\n").unwrap();
    let listener = accepting();
    let path = std::env::temp_dir().join(format!("healthd-refuse-{}.toml", std::process::id()));
    std::fs::write(&path, config(&store.0, &listener, 1, "1s")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_healthd"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&store.0.display().to_string()) && stderr.contains("not a healthd store"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&store.0).unwrap(), "this is someone's notes\n");
}

#[tokio::test]
async fn a_locked_store_slows_no_probe_and_no_check_and_writing_resumes_by_itself() {
    let store = StoreFile::new();
    let listener = accepting();
    let binary = spawn_binary(&config(&store.0, &listener, 20, "100ms"), &[], &[]).await;
    let written =
        wait_for_metric(&binary, "healthd_store_written_total", |written| written > 0.0).await;

    // Another process holds the file's write lock, as a stuck sqlite3 would.
    let locker = rusqlite::Connection::open(&store.0).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let runs_before =
        history_beyond(&binary, "down", 0).await["uptime"]["runsSinceStart"].as_u64().unwrap();
    let locked_at = Instant::now();
    let mut slowest = Duration::ZERO;
    while locked_at.elapsed() < Duration::from_secs(8) {
        let asked = Instant::now();
        // Whatever the status (the `down` check fails): answered, and fast.
        let response = reqwest::get(format!("{}/health", binary.base())).await.unwrap();
        assert_eq!(response.status(), 503);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Generous: a probe answers from memory, the store is not on its path.
    assert!(
        slowest < Duration::from_secs(1),
        "a probe took {slowest:?} while the store was locked"
    );
    let runs_locked =
        history_beyond(&binary, "down", 0).await["uptime"]["runsSinceStart"].as_u64().unwrap();
    assert!(
        runs_locked >= runs_before + 40,
        "checks slowed: {runs_before} then {runs_locked} runs in 8 s"
    );
    wait_for_metric(&binary, "healthd_store_write_failures_total", |failures| failures > 0.0).await;
    wait_for_metric(&binary, "healthd_store_dropped_total", |dropped| dropped > 0.0).await;
    let stalled = metric(&metrics(&binary).await, "healthd_store_written_total").unwrap();

    locker.execute_batch("ROLLBACK").unwrap();
    wait_for_metric(&binary, "healthd_store_written_total", |now| now > stalled).await;
    println!(
        "MEASURED locked store: slowest probe {slowest:?}, {} runs dropped, written {written} before, {stalled} while locked",
        metric(&metrics(&binary).await, "healthd_store_dropped_total").unwrap()
    );
    let log = stop(binary).await;
    assert_eq!(log.matches("the store's queue is full").count(), 1, "{log}");
    assert_eq!(log.matches("the store cannot write").count(), 1, "{log}");
    assert_eq!(log.matches("the store takes writes again").count(), 1, "{log}");
}
