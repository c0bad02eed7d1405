//! `kind = "exec"`: plugins from Debian's `monitoring-plugins-basic`
//! (installed by the test support when missing) and small scripts that
//! misbehave: past the deadline, flooding stdout, forking a child that
//! keeps the pipes open. Every process a plugin starts must be gone after
//! its run, which the tests wait for with a deadline.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use healthd_testkit::debian::require_package;
use reqwest::StatusCode;

use crate::support::app::{spawn_app, spawn_app_with_env};
use crate::support::checks::{
    assert_no_secret, config, every_body, output, shows, status, unique, wait_shows, DEADLINE,
};
use crate::support::upstream::{refused_address, Behaviour, Upstream};

/// The dir of Debian's plugins, installed if missing.
fn plugins() -> PathBuf {
    require_package("/usr/lib/nagios/plugins/check_dummy", "monitoring-plugins-basic");
    for plugin in ["check_tcp", "check_load"] {
        require_package(&format!("/usr/lib/nagios/plugins/{plugin}"), "monitoring-plugins-basic");
    }
    PathBuf::from("/usr/lib/nagios/plugins")
}

/// A temp dir for scripts and the PIDs they write, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(unique("healthd-exec-"));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes an executable `/bin/sh` script.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One exec check named `name` running `argv`, every 500 ms with a 400 ms
/// deadline and no retries; `extra` adds keys or overrides those two.
fn exec_check(name: &str, argv: &[&str], extra: &str) -> String {
    let argv: Vec<String> = argv.iter().map(|arg| format!("{arg:?}")).collect();
    let policy: String = [("interval", "500ms"), ("timeout", "400ms")]
        .iter()
        .filter(|(key, _)| !extra.contains(&format!("{key} =")))
        .map(|(key, value)| format!("{key} = \"{value}\"\n"))
        .collect();
    format!(
        r#"
[[checks]]
name = "{name}"
kind = "exec"
command = [{}]
retries = 0
{policy}{extra}
"#,
        argv.join(", ")
    )
}

/// The processes of group `pgid` that have not exited (zombies excluded).
fn live_members(pgid: i32) -> Vec<i32> {
    let mut live = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        let Some((_, after)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(2).and_then(|pgrp| pgrp.parse::<i32>().ok()) == Some(pgid) && fields[0] != "Z"
        {
            live.push(pid);
        }
    }
    live
}

/// Whether process `pid` exists and has not exited.
fn is_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, after)| after.trim_start().to_string()))
        .is_some_and(|after| !after.starts_with('Z'))
}

/// Waits until `done`, polling, or panics after [`DEADLINE`] with `what`.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "{what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The PID a script wrote into `path`, once it has.
async fn pid_in(path: &Path) -> i32 {
    wait_until(&format!("a PID in {}", path.display()), || {
        fs::read_to_string(path).is_ok_and(|text| text.trim().parse::<i32>().is_ok())
    })
    .await;
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn check_dummy_exit_statuses_become_pass_warn_fail_and_unknown() {
    // Arrange
    let dummy = plugins().join("check_dummy");
    let dummy = dummy.to_str().unwrap();
    let checks: String = [
        ("ok", "0", "all good"),
        ("slow", "1", "degraded"),
        ("down", "2", "gone"),
        ("odd", "3", "confused"),
    ]
    .iter()
    .map(|(name, code, text)| exec_check(name, &[dummy, code, text], ""))
    .collect();
    let app = spawn_app(&config(&checks)).await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, "ok:responseTime", "pass", None)
                && shows(a, "slow:responseTime", "warn", Some("WARNING: degraded"))
                && shows(a, "down:responseTime", "fail", Some("CRITICAL: gone"))
                && shows(a, "odd:responseTime", "fail", Some("unknown: UNKNOWN: confused"))
        })
        .await;

    // Assert
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(shows(&answer, "ok:responseTime", "pass", None), "{:#}", answer.json);
    assert!(
        shows(&answer, "slow:responseTime", "warn", Some("WARNING: degraded")),
        "{:#}",
        answer.json
    );
    assert!(
        shows(&answer, "down:responseTime", "fail", Some("CRITICAL: gone")),
        "{:#}",
        answer.json
    );
    assert!(
        shows(&answer, "odd:responseTime", "fail", Some("unknown: UNKNOWN: confused")),
        "{:#}",
        answer.json
    );
    let reading = answer.check("ok:responseTime").unwrap();
    assert_eq!(reading["componentType"], "component");
    assert_eq!(reading["observedUnit"], "ms");
    assert!(reading["observedValue"].as_f64().is_some_and(|ms| ms > 0.0), "{reading}");
}

#[tokio::test]
async fn check_tcp_reports_its_time_against_a_listener_and_fails_on_a_closed_port() {
    // Arrange
    let check_tcp = plugins().join("check_tcp");
    let check_tcp = check_tcp.to_str().unwrap();
    let listener = Upstream::start(Behaviour::Never).await;
    let closed = refused_address().await;
    let port = |address: std::net::SocketAddr| address.port().to_string();
    let perfdata = r#"perfdata = [{ label = "time", unit = "ms" }]"#;
    let checks =
        exec_check(
            "up",
            &[check_tcp, "-H", "127.0.0.1", "-p", &port(listener.address())],
            perfdata,
        ) + &exec_check("closed", &[check_tcp, "-H", "127.0.0.1", "-p", &port(closed)], perfdata);
    let app = spawn_app(&config(&checks)).await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, "up:time", "pass", None) && status(a, "closed:time") == Some("fail")
        })
        .await;

    // Assert: the plugin's time (seconds) is shown in ms.
    let up = answer.check("up:time").unwrap();
    assert_eq!(up["status"], "pass", "{:#}", answer.json);
    assert_eq!(up["observedUnit"], "ms");
    assert!(up["observedValue"].as_f64().is_some_and(|ms| (0.0..400.0).contains(&ms)), "{up}");
    assert!(answer.check("up:responseTime").is_some());
    assert_eq!(status(&answer, "closed:time"), Some("fail"));
    let closed_output = output(&answer, "closed:time").unwrap();
    assert!(closed_output.contains("Connection refused"), "{closed_output}");
}

#[tokio::test]
async fn check_load_reports_the_load_averages_and_leaves_out_a_label_it_did_not_print() {
    // Arrange
    let check_load = plugins().join("check_load");
    let checks = exec_check(
        "load",
        &[check_load.to_str().unwrap(), "-w", "1000,1000,1000", "-c", "2000,2000,2000"],
        r#"perfdata = ["load1", "load5", "load15", "load99"]"#,
    );
    let app = spawn_app(&config(&checks)).await;

    // Act
    let answer = wait_shows(&app, "load:load1", "pass", None).await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK, "{:#}", answer.json);
    for key in ["load:load1", "load:load5", "load:load15"] {
        let reading = answer.check(key).unwrap_or_else(|| panic!("no {key}: {:#}", answer.json));
        assert_eq!(reading["status"], "pass");
        assert!(reading["observedValue"].as_f64().is_some_and(|load| load >= 0.0), "{reading}");
    }
    assert!(answer.check("load:load99").is_none(), "{:#}", answer.json);
}

#[tokio::test]
async fn a_plugin_past_its_deadline_is_killed_with_its_whole_process_group() {
    // Arrange: the plugin leads its group; its child sleeps in the group too.
    let scratch = Scratch::new();
    let pid_file = scratch.path("pid");
    let child_file = scratch.path("child");
    let script = scratch.script(
        "sleeper",
        &format!(
            "echo $$ > {}.tmp && mv {0}.tmp {0}\n/bin/sleep 60 &\necho $! > {}.tmp && mv {1}.tmp {1}\n/bin/sleep 60",
            pid_file.display(),
            child_file.display()
        ),
    );
    let checks = exec_check("slow", &[script.to_str().unwrap()], "interval = \"5s\"");
    let app = spawn_app(&config(&checks)).await;

    // Act
    let answer =
        wait_shows(&app, "slow:responseTime", "fail", Some("timed out after 400 ms")).await;
    let leader = pid_in(&pid_file).await;
    let child = pid_in(&child_file).await;

    // Assert: nothing of the group outlives the deadline.
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    wait_until(&format!("process group {leader} gone"), || live_members(leader).is_empty()).await;
    assert!(!is_alive(child), "the plugin's child {child} is still alive");
}

#[tokio::test]
async fn a_plugin_that_floods_stdout_is_read_to_a_cap_and_one_that_never_stops_is_killed() {
    // Arrange: 5 MB and an exit, and a flood that never ends.
    let scratch = Scratch::new();
    let finite = scratch.script(
        "finite",
        "/usr/bin/yes 'FLOOD WARNING - busy | lines=1' | /usr/bin/head -c 5000000\nexit 1",
    );
    let pid_file = scratch.path("pid");
    let endless = scratch.script(
        "endless",
        &format!("echo $$ > {}.tmp && mv {0}.tmp {0}\nexec /usr/bin/yes", pid_file.display()),
    );
    let checks = exec_check(
        "finite",
        &[finite.to_str().unwrap()],
        "perfdata = [\"lines\"]\ntimeout = \"2500ms\"\ninterval = \"3s\"",
    ) + &exec_check("endless", &[endless.to_str().unwrap()], "interval = \"5s\"");
    let app = spawn_app(&config(&checks)).await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, "finite:lines", "warn", Some("FLOOD WARNING - busy"))
                && shows(a, "endless:responseTime", "fail", Some("timed out after 400 ms"))
        })
        .await;
    let endless_pid = pid_in(&pid_file).await;

    // Assert: the first line, and its perfdata, from 5 MB of output.
    assert!(
        shows(&answer, "finite:lines", "warn", Some("FLOOD WARNING - busy")),
        "{:#}",
        answer.json
    );
    assert_eq!(answer.check("finite:lines").unwrap()["observedValue"].as_f64(), Some(1.0));
    wait_until("the endless flood's group gone", || live_members(endless_pid).is_empty()).await;
}

#[tokio::test]
async fn a_plugin_that_forks_a_child_and_exits_is_done_when_it_exits_and_the_child_is_killed() {
    // Arrange: the child inherits stdout and would hold it open for 60 s.
    let scratch = Scratch::new();
    let child_file = scratch.path("child");
    let script = scratch.script(
        "forker",
        &format!(
            "/bin/sleep 60 &\necho $! > {}.tmp && mv {0}.tmp {0}\necho 'OK - forked | children=1'\nexit 0",
            child_file.display()
        ),
    );
    let checks = exec_check(
        "forker",
        &[script.to_str().unwrap()],
        "perfdata = [\"children\"]\ntimeout = \"3s\"\ninterval = \"5s\"",
    );
    let app = spawn_app(&config(&checks)).await;

    // Act
    let answer = wait_shows(&app, "forker:children", "pass", None).await;
    let child = pid_in(&child_file).await;

    // Assert: a pass (not the 3 s deadline), well before the child's 60 s.
    assert!(shows(&answer, "forker:children", "pass", None), "{:#}", answer.json);
    let took = answer.check("forker:responseTime").unwrap()["observedValue"].as_f64().unwrap();
    assert!(took < 3000.0, "the run took {took} ms");
    wait_until(&format!("the forked child {child} gone"), || !is_alive(child)).await;
}

#[tokio::test]
async fn the_plugin_sees_only_the_variables_the_config_names() {
    // Arrange: the script lists the names in the environment it was started
    // with (/proc/$$/environ: what execve was given, before the shell adds
    // anything).
    let scratch = Scratch::new();
    let secret = unique("plugin-secret-");
    let script = scratch.script(
        "names",
        "echo \"VARS $(/usr/bin/tr '\\0' '\\n' < /proc/$$/environ | /usr/bin/cut -d= -f1 | /usr/bin/sort | /usr/bin/tr '\\n' ' ')\"\nexit 1",
    );
    let checks = exec_check("names", &[script.to_str().unwrap()], "env = [\"PLUGIN_TOKEN\"]");
    let env = BTreeMap::from([("PLUGIN_TOKEN".to_string(), secret.clone())]);
    let app = spawn_app_with_env(&config(&checks), env).await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            output(a, "names:responseTime") == Some("VARS PLUGIN_TOKEN")
        })
        .await;

    // Assert
    assert_eq!(
        output(&answer, "names:responseTime"),
        Some("VARS PLUGIN_TOKEN"),
        "{:#}",
        answer.json
    );
    assert_no_secret(&every_body(&app, &["names"]).await, &[&secret], "a plugin's variable");
}
