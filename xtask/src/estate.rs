//! A healthd with a large estate, for the status page: N checks with a
//! fresh SQLite store, most of them tcp checks against a local listener,
//! some failing (a refused port; non-critical, so `/health` stays 200) and
//! some warning (a disk check with `warn_below = "100%"`, `fail_below = "0%"`:
//! a warning whatever the machine's free space), spread through
//! the configured order so that "failing first" is the page's doing. The
//! contract stage drives `/status` over 1,000 of them (contract/estate.mjs);
//! `cargo xtask bench --page` measures it over 10,000 (contract/page-bench.mjs).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::services::{
    fetch, free_port, wait_until, AcceptingListener, Process, Profile, TOKEN, WORKERS,
};

/// How many of each kind of check.
pub struct Shape {
    pub checks: usize,
    pub failing: usize,
    pub warning: usize,
}

pub struct Estate {
    pub port: u16,
    /// The failing and warning checks' names, in the configured order.
    pub failing: Vec<String>,
    pub warning: Vec<String>,
    _process: Process,
    _listener: AcceptingListener,
}

impl Estate {
    /// Starts healthd with `shape`'s checks every 10 s, its log at
    /// `target/xtask/estate-PORT.log`, and waits for every first run.
    pub fn start(root: &Path, profile: Profile, shape: &Shape) -> anyhow::Result<Estate> {
        let listener = AcceptingListener::start()?;
        let refused = free_port()?;
        let port = free_port()?;
        let dir = root.join("target/xtask").join(format!("estate-{port}"));
        // A fresh store each time: nothing from an earlier run.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let (config, failing, warning) = config(port, shape, listener.port, refused, &dir);
        let config_path = dir.join("healthd.toml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.with_extension("log"))?;
        let child = Command::new(profile.binary(root, "healthd"))
            .arg("--config")
            .arg(&config_path)
            .args(["--log-format", "json"])
            .env("HEALTHD_TOKEN", TOKEN)
            .env("RUST_LOG", "info,healthd::access=off")
            .stdout(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting healthd for the estate")?;
        let process = Process::native(child);
        wait_until("the estate's startup probe answering 200", Duration::from_secs(120), || {
            fetch(port, "/health/startup", None).is_ok_and(|(status, _)| status == 200)
        })?;
        Ok(Estate { port, failing, warning, _process: process, _listener: listener })
    }
}

fn config(
    port: u16,
    shape: &Shape,
    listener: u16,
    refused: u16,
    dir: &Path,
) -> (String, Vec<String>, Vec<String>) {
    let store: PathBuf = dir.join("store.db");
    let mut config = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
service_id = "estate"
description = "an estate of {checks} checks"
workers = {WORKERS}
drain_delay = "0s"

[access]
details = "authorized"
details_allow = ["127.0.0.0/8"]
[[access.tokens]]
name = "xtask"
env = "HEALTHD_TOKEN"

[storage]
path = "{store}"

[defaults]
interval = "10s"
timeout = "1s"
retries = 0
"#,
        checks = shape.checks,
        store = store.display(),
    );
    let (mut failing, mut warning) = (Vec::new(), Vec::new());
    // Spread through the order: a failing check a third into each of its
    // strides, a warning one at the end of each of its own, never first.
    let stride = |count: usize| (shape.checks / count.max(1)).max(1);
    let (fail_every, warn_every) = (stride(shape.failing), stride(shape.warning));
    for index in 0..shape.checks {
        let name = format!("svc-{index:05}");
        let fails = failing.len() < shape.failing && index % fail_every == fail_every / 3;
        let warns = !fails && warning.len() < shape.warning && index % warn_every == warn_every - 1;
        let body = if fails {
            failing.push(name.clone());
            format!("kind = \"tcp\"\naddress = \"127.0.0.1:{refused}\"\ncritical = false\n")
        } else if warns {
            warning.push(name.clone());
            "kind = \"disk\"\npath = \"/\"\nwarn_below = \"100%\"\nfail_below = \"0%\"\n"
                .to_string()
        } else {
            format!("kind = \"tcp\"\naddress = \"127.0.0.1:{listener}\"\n")
        };
        let _ = write!(config, "\n[[checks]]\nname = \"{name}\"\n{body}");
    }
    (config, failing, warning)
}
