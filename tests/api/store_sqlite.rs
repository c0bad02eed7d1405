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

const PING_KEY: &str = "store-beat-key-5e1f";

/// Two heartbeats with a store (`storage`: the `[storage]` table's keys):
/// `backup` and `nightly`, due every hour, so that only their pings judge
/// them, both pinged with `PING_KEY`.
pub fn heartbeat_config(storage: &str) -> String {
    use sha2::Digest;
    let key: String =
        sha2::Sha256::digest(PING_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access]\ndetails = \"always\"\n[storage]\n{storage}\n"
    );
    for name in ["backup", "nightly"] {
        text.push_str(&format!(
            "[[checks]]\nname = \"{name}\"\nkind = \"heartbeat\"\nperiod = \"1h\"\ngrace = \"10m\"\n\
             interval = \"200ms\"\ntimeout = \"100ms\"\nretries = 0\nping_key_sha256 = \"{key}\"\n"
        ));
    }
    text
}

async fn ping(binary: &RunningBinary, check: &str, suffix: &str, body: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/health/checks/{check}/ping{suffix}", binary.base()))
        .bearer_auth(PING_KEY)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{check}{suffix}");
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

/// Polls `/health` until the reading of `key` satisfies `wanted`.
async fn wait_for_reading(
    binary: &RunningBinary,
    key: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let response = reqwest::get(format!("{}/health", binary.base())).await.unwrap();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        let reading = &body["checks"][key][0];
        if reading["output"] != "no reading yet" && wanted(reading) {
            return reading.clone();
        }
        assert!(started.elapsed() < DEADLINE, "{key} never as wanted: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn time_of(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value.as_str().and_then(|text| text.parse().ok()).unwrap_or_else(|| panic!("no time: {value}"))
}

#[tokio::test]
async fn the_last_ping_survives_a_restart_with_its_status_duration_and_age() {
    let store = StoreFile::new();
    let text = heartbeat_config(&format!("path = \"{}\"", store.0.display()));
    pings_survive_a_restart(&text, &[]).await;
    let file = rusqlite::Connection::open(&store.0).unwrap();
    let rows: i64 = file.query_row("SELECT count(*) FROM pings", [], |row| row.get(0)).unwrap();
    assert_eq!(rows, 2);
}

/// Pings two heartbeats of healthd run with `text` and `env`, restarts it,
/// and asserts that each heartbeat's readings continue from its last ping.
pub async fn pings_survive_a_restart(text: &str, env: &[(&str, &str)]) {
    // Arrange: `backup` starts and ends with exit status 3 (0.3 s later);
    // `nightly` succeeds.
    let binary = spawn_binary(text, &[], env).await;
    ping(&binary, "backup", "/start", "").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ping(&binary, "backup", "/3", "pg_dump: disk full").await;
    let succeeded = time_of(&ping(&binary, "nightly", "", "42 rows").await["time"]);
    let failed =
        wait_for_reading(&binary, "backup:sinceLastPing", |reading| reading["status"] == "fail")
            .await;
    wait_for_reading(&binary, "nightly:sinceLastPing", |reading| {
        reading["observedValue"].is_number()
    })
    .await;
    // The pings are written with the next batch; a clean stop writes the rest.
    stop(binary).await;

    // Act: healthd starts again on the same store.
    let binary = spawn_binary(text, &[], env).await;
    let restarted_at = chrono::Utc::now();

    // Assert: each heartbeat's first reading after the restart continues
    // from its last ping, not from the restart.
    let backup = wait_for_reading(&binary, "backup:sinceLastPing", |reading| {
        time_of(&reading["time"]) >= restarted_at
    })
    .await;
    assert_eq!(backup["status"], "fail", "{backup}");
    assert_eq!(backup["output"], "exit status 3\npg_dump: disk full");
    assert_eq!(backup["output"], failed["output"]);
    let duration = wait_for_reading(&binary, "backup:duration", |reading| {
        time_of(&reading["time"]) >= restarted_at
    })
    .await;
    let seconds = duration["observedValue"].as_f64().unwrap();
    assert!((0.3..5.0).contains(&seconds), "{duration}");
    let nightly = wait_for_reading(&binary, "nightly:sinceLastPing", |reading| {
        time_of(&reading["time"]) >= restarted_at
    })
    .await;
    assert_eq!(nightly["status"], "pass", "{nightly}");
    let age = nightly["observedValue"].as_f64().expect("an age: the last ping is remembered");
    let expected = (time_of(&nightly["time"]) - succeeded).num_milliseconds() as f64 / 1000.0;
    assert!((age - expected).abs() < 0.5, "sinceLastPing {age} s, {expected} s since the ping");
    assert!(age >= (restarted_at - succeeded).num_milliseconds() as f64 / 1000.0, "{nightly}");
    println!(
        "MEASURED pings across a restart: nightly's sinceLastPing {age:.2} s after the restart"
    );
    stop(binary).await;
}

/// A probe answers from memory: this bound only catches one that waits
/// for the store (whose busy timeout is 5 s).
const PROBE_BOUND: Duration = Duration::from_millis(500);

/// Runs a command that must succeed; answers its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A directory with a filesystem the test mounted on it (as root, which
/// the tests run as): unmounted, its loop devices detached and its image
/// removed when dropped.
struct Mounted {
    dir: PathBuf,
    image: Option<PathBuf>,
    /// Loop devices the image was attached to, newest last.
    loops: Vec<String>,
}

impl Mounted {
    fn dir() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "healthd-disk-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A tmpfs of `size` (such as `16m`).
    fn tmpfs(size: &str) -> Mounted {
        let dir = Mounted::dir();
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path(&dir)]);
        Mounted { dir, image: None, loops: Vec::new() }
    }

    /// An ext4 image of `mib` MiB on a loop device, which turns read-only
    /// on an error (`errors=remount-ro`, as a failing disk does).
    fn ext4(mib: u64) -> Mounted {
        let dir = Mounted::dir();
        let image = dir.with_extension("img");
        std::fs::File::create(&image).unwrap().set_len(mib << 20).unwrap();
        run("mkfs.ext4", &["-q", "-F", path(&image)]);
        let mut disk = Mounted { dir, image: Some(image), loops: Vec::new() };
        disk.attach_and_mount();
        disk
    }

    /// Attaches the image to a new loop device and mounts it.
    fn attach_and_mount(&mut self) {
        let image = self.image.as_ref().expect("an image");
        let device = run("losetup", &["--find", "--show", path(image)]);
        run("mount", &["-o", "errors=remount-ro", &device, path(&self.dir)]);
        self.loops.push(device);
    }

    fn store(&self) -> PathBuf {
        self.dir.join("store.db")
    }

    /// Whether a new file can be written in it now.
    fn writable(&self) -> bool {
        std::fs::write(self.dir.join("probe"), b"x").is_ok()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        for device in &self.loops {
            // A device still in use (a lazily unmounted filesystem with
            // files open) is detached once it is free.
            let _ = std::process::Command::new("losetup").args(["-d", device]).status();
        }
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// 20 `up` checks every 100 ms keeping 5,000 runs each: the file grows by
/// each batch, so a full disk is hit at once.
fn growing_config(store: &Path, listener: &TcpListener) -> String {
    let address = listener.local_addr().unwrap();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access]\ndetails = \"always\"\n[storage]\npath = \"{}\"\n\
         [defaults]\ninterval = \"100ms\"\ntimeout = \"80ms\"\nretries = 0\nhistory = 5000\n",
        store.display()
    );
    for index in 0..20 {
        text.push_str(&format!(
            "[[checks]]\nname = \"up-{index}\"\nkind = \"tcp\"\naddress = \"{address}\"\n"
        ));
    }
    text
}

/// Probes `/health/live` and `/health/ready` for `during`, each expected
/// to answer 200; answers the slowest.
async fn probe_for(binary: &RunningBinary, during: Duration) -> Duration {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < during {
        for path in ["/health/live", "/health/ready"] {
            let asked = Instant::now();
            let response = client.get(format!("{}{path}", binary.base())).send().await.unwrap();
            slowest = slowest.max(asked.elapsed());
            assert_eq!(response.status(), 200, "{path}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slowest
}

/// Polls the file until it holds a run newer than `after`.
async fn wait_for_a_run_after(store: &Path, after: chrono::DateTime<chrono::Utc>) {
    let started = Instant::now();
    loop {
        let newest = rusqlite::Connection::open_with_flags(
            store,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|file| {
            file.query_row("SELECT max(at) FROM runs", [], |row| row.get::<_, Option<i64>>(0))
        });
        if matches!(newest, Ok(Some(at)) if at > after.timestamp_micros()) {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "no run written after {after}: {newest:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_full_disk_slows_no_probe_and_writing_resumes_by_itself_once_there_is_room() {
    // Arrange: the store on a 16 MiB tmpfs, written to.
    let disk = Mounted::tmpfs("16m");
    let listener = accepting();
    let binary = spawn_binary(&growing_config(&disk.store(), &listener), &[], &[]).await;
    wait_for_metric(&binary, "healthd_store_written_total", |written| written > 0.0).await;

    // Act: another file takes every byte left.
    let filler = disk.dir.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let full = loop {
            if let Err(error) = file.write_all(&chunk) {
                break error;
            }
        };
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    }
    let slowest = probe_for(&binary, Duration::from_secs(6)).await;
    let failures =
        wait_for_metric(&binary, "healthd_store_write_failures_total", |failed| failed > 0.0).await;
    let stalled = metric(&metrics(&binary).await, "healthd_store_written_total").unwrap();
    std::fs::remove_file(&filler).unwrap();
    let freed_at = chrono::Utc::now();
    let freed = Instant::now();

    // Assert: probes answered at once; the failures counted; writing
    // resumed by itself, new runs in the file.
    let resumed =
        wait_for_metric(&binary, "healthd_store_written_total", |written| written > stalled).await;
    let resumed_after = freed.elapsed();
    wait_for_a_run_after(&disk.store(), freed_at).await;
    assert!(slowest < PROBE_BOUND, "a probe took {slowest:?} while the disk was full");
    println!(
        "MEASURED full disk: slowest probe {slowest:?}; {failures} failed writes; written {stalled} when full, {resumed} {resumed_after:?} after room was made"
    );
    let log = stop(binary).await;
    assert_eq!(log.matches("the store cannot write").count(), 1, "{log}");
    assert_eq!(log.matches("the store takes writes again").count(), 1, "{log}");
}

#[tokio::test]
async fn a_disk_gone_read_only_slows_no_probe_and_writing_resumes_once_it_is_writable_again() {
    // Arrange: the store on an ext4 image on a loop device, written to.
    let mut disk = Mounted::ext4(64);
    let listener = accepting();
    let binary = spawn_binary(&growing_config(&disk.store(), &listener), &[], &[]).await;
    wait_for_metric(&binary, "healthd_store_written_total", |written| written > 0.0).await;

    // Act: the filesystem turns read-only. `mount -o remount,ro` is
    // refused while a process holds a file open for writing (EBUSY), as
    // healthd does its store; the kernel's own switch on a disk error is
    // what takes a filesystem read-only under a running service.
    let remount =
        std::process::Command::new("mount").args(["-o", "remount,ro", path(&disk.dir)]).output();
    let remounted = remount.as_ref().is_ok_and(|output| output.status.success());
    if !remounted {
        let device = disk.loops.last().unwrap().trim_start_matches("/dev/").to_string();
        std::fs::write(
            format!("/sys/fs/ext4/{device}/trigger_fs_error"),
            "healthd test: the disk fails\n",
        )
        .unwrap();
    }
    assert!(!disk.writable(), "the filesystem is still writable");
    let slowest = probe_for(&binary, Duration::from_secs(6)).await;
    let failures =
        wait_for_metric(&binary, "healthd_store_write_failures_total", |failed| failed > 0.0).await;
    let stalled = metric(&metrics(&binary).await, "healthd_store_written_total").unwrap();
    // Writable again: mounted read-write again when `remount,ro` worked;
    // otherwise as an operator recovers a disk that failed (a read-only
    // switch after an error cannot be undone by `remount,rw`): a lazy
    // unmount (healthd's files stay open on the old mount), a check of
    // the image, and a new mount of it where the old one was.
    if remounted {
        run("mount", &["-o", "remount,rw", path(&disk.dir)]);
    } else {
        run("umount", &["-l", path(&disk.dir)]);
        let image = disk.image.clone().unwrap();
        let checked = std::process::Command::new("e2fsck").args(["-fy", path(&image)]).status();
        // 0: clean; 1: errors corrected.
        assert!(checked.is_ok_and(|status| status.code().is_some_and(|code| code <= 1)));
        disk.attach_and_mount();
    }
    assert!(disk.writable());
    let recovered_at = chrono::Utc::now();
    let recovered = Instant::now();

    // Assert: probes answered at once; the failures counted; writing
    // resumed by itself, into the file that is there now.
    let resumed =
        wait_for_metric(&binary, "healthd_store_written_total", |written| written > stalled).await;
    let resumed_after = recovered.elapsed();
    wait_for_a_run_after(&disk.store(), recovered_at).await;
    assert!(slowest < PROBE_BOUND, "a probe took {slowest:?} while the disk was read-only");
    println!(
        "MEASURED read-only disk ({}): slowest probe {slowest:?}; {failures} failed writes; written {stalled} when read-only, {resumed} {resumed_after:?} after it was writable",
        if remounted { "remount,ro then remount,rw" } else { "ext4 error, remount-ro; lazy unmount, e2fsck, mounted again" }
    );
    let log = stop(binary).await;
    assert_eq!(log.matches("the store cannot write").count(), 1, "{log}");
    assert_eq!(log.matches("the store takes writes again").count(), 1, "{log}");
    if !remounted {
        assert!(log.contains("opened it again"), "{log}");
    }
}

#[tokio::test]
async fn a_heartbeat_a_reload_adds_keeps_its_last_ping_across_a_restart() {
    let store = StoreFile::new();
    let text = heartbeat_config(&format!("path = \"{}\"", store.0.display()));
    // `nightly` comes with the reload.
    let before = &text[..text.find("[[checks]]\nname = \"nightly\"").unwrap()];
    let binary = spawn_binary(before, &[], &[]).await;
    binary.write_config(&text);
    binary.signal(libc::SIGHUP);
    let started = Instant::now();
    while !binary.stdout().contains("config reloaded") {
        assert!(started.elapsed() < DEADLINE, "no reload:\n{}", binary.stdout());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let succeeded = time_of(&ping(&binary, "nightly", "", "").await["time"]);
    stop(binary).await;

    let binary = spawn_binary(&text, &[], &[]).await;
    let restarted_at = chrono::Utc::now();
    let nightly = wait_for_reading(&binary, "nightly:sinceLastPing", |reading| {
        time_of(&reading["time"]) >= restarted_at
    })
    .await;
    let age = nightly["observedValue"].as_f64().expect("the ping after the reload is remembered");
    let expected = (time_of(&nightly["time"]) - succeeded).num_milliseconds() as f64 / 1000.0;
    assert!((age - expected).abs() < 0.5, "sinceLastPing {age} s, {expected} s since the ping");
    stop(binary).await;
}
