//! `kind = "file"`: real files in a temp dir whose modification times the
//! tests set (`File::set_modified`), grown, shrunk, removed and created
//! again while healthd watches them.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;

use crate::support::app::spawn_app;
use crate::support::checks::{config, shows, unique, wait_shows, DEADLINE};

const AGE: &str = "backup:age";
const SIZE: &str = "backup:size";

/// A temp dir of the test's own, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(unique("healthd-file-"));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes `size` bytes to `path` and sets its modification time `age` ago.
fn write_aged(path: &Path, size: usize, age: Duration) {
    fs::write(path, vec![b'x'; size]).unwrap();
    let file = File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

const HOUR: Duration = Duration::from_secs(3600);

/// One file check named `backup` on `path` every 200 ms; `extra` adds keys.
fn backup_check(path: &Path, extra: &str) -> String {
    config(&format!(
        r#"
[[checks]]
name = "backup"
kind = "file"
path = "{}"
interval = "200ms"
timeout = "100ms"
retries = 0
{extra}
"#,
        path.display()
    ))
}

#[tokio::test]
async fn a_fresh_file_passes_with_its_age_and_size() {
    // Arrange
    let scratch = Scratch::new();
    let path = scratch.path("backup.tar");
    write_aged(&path, 4096, Duration::from_secs(120));
    let app = spawn_app(&backup_check(&path, "max_age = \"26h\"\nmin_size = \"1KiB\"")).await;

    // Act
    let answer = wait_shows(&app, AGE, "pass", None).await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK);
    let age = answer.check(AGE).unwrap();
    assert_eq!(age["status"], "pass");
    assert_eq!(age["componentType"], "system");
    assert_eq!(age["observedUnit"], "s");
    let seconds = age["observedValue"].as_f64().unwrap();
    assert!((120.0..3600.0).contains(&seconds), "{age}");
    let size = answer.check(SIZE).unwrap();
    assert_eq!(size["observedUnit"], "bytes");
    assert_eq!(size["observedValue"].as_f64(), Some(4096.0));
}

#[tokio::test]
async fn a_file_older_than_max_age_fails_and_passes_again_once_rewritten() {
    // Arrange: last written 27 hours ago.
    let scratch = Scratch::new();
    let path = scratch.path("backup.tar");
    write_aged(&path, 100, 27 * HOUR);
    let app = spawn_app(&backup_check(&path, "max_age = \"26h\"")).await;

    // Act
    let stale = wait_shows(&app, AGE, "fail", Some("modified more than 26h ago")).await;

    // Assert
    assert_eq!(stale.status, StatusCode::SERVICE_UNAVAILABLE);
    let seconds = stale.check(AGE).unwrap()["observedValue"].as_f64().unwrap();
    assert!(seconds >= 27.0 * 3600.0, "{seconds}");

    // Act: the nightly job runs.
    write_aged(&path, 100, Duration::ZERO);
    let fresh = wait_shows(&app, AGE, "pass", None).await;

    // Assert
    assert_eq!(fresh.status, StatusCode::OK);
}

#[tokio::test]
async fn warn_age_warns_before_max_age_fails() {
    // Arrange
    let scratch = Scratch::new();
    let path = scratch.path("feed.csv");
    write_aged(&path, 100, 2 * HOUR);
    let app = spawn_app(&backup_check(&path, "warn_age = \"1h\"\nmax_age = \"3h\"")).await;

    // Act
    let answer = wait_shows(&app, AGE, "warn", Some("modified more than 1h ago")).await;

    // Assert: a warning keeps the service up.
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["status"], "warn");
}

#[tokio::test]
async fn a_missing_file_fails_as_not_found_until_it_appears() {
    // Arrange
    let scratch = Scratch::new();
    let path = scratch.path("not-yet.tar");
    let app = spawn_app(&backup_check(&path, "")).await;

    // Act
    let missing = wait_shows(&app, AGE, "fail", Some("not found")).await;

    // Assert
    assert_eq!(missing.status, StatusCode::SERVICE_UNAVAILABLE);

    // Act
    write_aged(&path, 10, Duration::ZERO);
    let present = wait_shows(&app, AGE, "pass", None).await;

    // Assert
    assert_eq!(present.check(SIZE).unwrap()["observedValue"].as_f64(), Some(10.0));
}

#[tokio::test]
async fn sizes_outside_the_limits_fail() {
    // Arrange
    let scratch = Scratch::new();
    let path = scratch.path("dump.sql");
    write_aged(&path, 10, Duration::ZERO);
    let app = spawn_app(&backup_check(&path, "min_size = 1000\nmax_size = \"2KB\"")).await;

    // Act: a truncated dump.
    let small = wait_shows(&app, AGE, "fail", Some("smaller than 1000 bytes")).await;

    // Assert
    assert_eq!(small.check(SIZE).unwrap()["observedValue"].as_f64(), Some(10.0));

    // Act: a runaway one.
    write_aged(&path, 3000, Duration::ZERO);
    wait_shows(&app, AGE, "fail", Some("larger than 2000 bytes")).await;

    // Act: a good one.
    write_aged(&path, 1500, Duration::ZERO);
    let good = wait_shows(&app, AGE, "pass", None).await;

    // Assert
    assert_eq!(good.check(SIZE).unwrap()["observedValue"].as_f64(), Some(1500.0));
}

#[tokio::test]
async fn a_directory_is_judged_by_its_newest_entry() {
    // Arrange: a spool dir, empty at first.
    let scratch = Scratch::new();
    let spool = scratch.path("spool");
    fs::create_dir(&spool).unwrap();
    let app = spawn_app(&backup_check(&spool, "max_age = \"1h\"")).await;

    // Act
    wait_shows(&app, AGE, "fail", Some("directory is empty")).await;
    write_aged(&spool.join("old-1"), 5, 3 * HOUR);
    write_aged(&spool.join("old-2"), 6, 2 * HOUR);
    let old = wait_shows(&app, AGE, "fail", Some("modified more than 1h ago")).await;

    // Assert: the newest of the two (2 h) is the one measured.
    let seconds = old.check(AGE).unwrap()["observedValue"].as_f64().unwrap();
    assert!((2.0 * 3600.0..3.0 * 3600.0).contains(&seconds), "{seconds}");
    assert_eq!(old.check(SIZE).unwrap()["observedValue"].as_f64(), Some(6.0));

    // Act: a new entry arrives.
    write_aged(&spool.join("new"), 7, Duration::from_secs(5));
    let fresh = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, AGE, "pass", None)
                && a.check(SIZE).and_then(|s| s["observedValue"].as_f64()) == Some(7.0)
        })
        .await;

    // Assert
    assert_eq!(fresh.status, StatusCode::OK);
}
