//! The binary's config handling: `check-config` exits 0, or 2 with one line
//! per problem naming the file, the key and the reason.

use std::path::PathBuf;
use std::process::{Command, Output};

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("healthd-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn healthd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_healthd"))
        .args(args)
        .env_remove("HEALTHD_CONFIG")
        .env_remove("HEALTHD_LISTEN")
        .output()
        .unwrap()
}

/// Runs `check-config` on `text` and returns (exit code, stderr).
fn check_config(name: &str, text: &str) -> (i32, String, PathBuf) {
    let path = write_config(name, text);
    let output = healthd(&["check-config", "--config", path.to_str().unwrap()]);
    (output.status.code().unwrap(), String::from_utf8(output.stderr).unwrap(), path)
}

fn assert_rejected(name: &str, text: &str, key: &str, reason: &str) {
    let (code, stderr, path) = check_config(name, text);
    assert_eq!(code, 2, "{stderr}");
    let line = stderr
        .lines()
        .find(|line| line.contains(reason))
        .unwrap_or_else(|| panic!("no line says {reason:?}: {stderr}"));
    assert!(line.starts_with(&format!("{}: {key}: ", path.display())), "{line}");
}

#[test]
fn a_valid_config_passes_check_config() {
    let (code, stderr, _) = check_config(
        "valid.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[[checks]]\nname = \"disk\"\nkind = \"disk\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn an_unknown_key_is_rejected_with_its_name() {
    assert_rejected(
        "unknown.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nport = 1\n",
        "server.port",
        "unknown field `port`",
    );
}

#[test]
fn a_bad_duration_is_rejected() {
    assert_rejected(
        "duration.toml",
        "[defaults]\ninterval = \"ten seconds\"\n",
        "defaults.interval",
        "invalid duration",
    );
}

#[test]
fn a_bad_listen_address_is_rejected() {
    assert_rejected(
        "listen.toml",
        "[server]\nlisten = \"localhost\"\n",
        "server.listen",
        "invalid listen address",
    );
}

#[test]
fn a_duplicate_check_name_is_rejected() {
    let text =
        "[[checks]]\nname = \"d\"\nkind = \"disk\"\n[[checks]]\nname = \"d\"\nkind = \"disk\"\n";
    assert_rejected("duplicate.toml", text, "checks[1].name", "duplicate check name");
}

#[test]
fn a_timeout_that_does_not_fit_inside_the_interval_is_rejected() {
    let text = "[[checks]]\nname = \"t\"\nkind = \"tcp\"\naddress = \"127.0.0.1:9\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nretries = 2\n";
    assert_rejected("timeout.toml", text, "checks[0]", "does not fit inside interval");
}

#[test]
fn every_problem_gets_its_own_line() {
    let text = "[access]\nallow = [\"10.0.0.0/33\"]\n[[checks]]\nname = \"x\"\nkind = \"carrier-pigeon\"\n";
    let (code, stderr, _) = check_config("several.toml", text);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(stderr.contains("access.allow[0]"), "{stderr}");
    assert!(stderr.contains("checks[0].kind: unknown kind \"carrier-pigeon\""), "{stderr}");
}

#[test]
fn a_missing_file_is_named() {
    let output = healthd(&["check-config", "--config", "/no/such/healthd.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("/no/such/healthd.toml: "));
}

#[test]
fn running_with_a_bad_config_exits_2_before_serving() {
    let path = write_config("run-bad.toml", "[server]\nlisten = \"nope\"\n");
    let output = healthd(&["--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.listen"));
}

#[test]
fn hash_token_prints_the_sha256_of_stdin() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_healthd"))
        .arg("hash-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/healthd.example.toml");
    let output = healthd(&["check-config", "--config", example]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
