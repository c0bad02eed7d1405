//! `cargo xtask bench --soak [--smoke]`: how much healthd logs when its
//! dependencies flap. The release build runs 1,000 tcp checks every second
//! against a local port that is up 5 s and down 5 s, for 15 minutes (20 s
//! under `--smoke`), logging at the default level (`info`, text) to a file;
//! the bench reports the log's size and what its lines said. The target is
//! under 5 MB for the 15 minutes.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::services::{fetch, free_port, wait_until, Process, Profile};

const CHECKS: usize = 1_000;
const UP_AND_DOWN: Duration = Duration::from_secs(5);
const TARGET_BYTES: u64 = 5_000_000;

pub fn run(root: &Path, smoke: bool) -> anyhow::Result<String> {
    let length = if smoke { Duration::from_secs(20) } else { Duration::from_secs(15 * 60) };
    let dir = root.join("target/bench/soak");
    fs::create_dir_all(&dir)?;
    let (port, dependency) = (free_port()?, free_port()?);
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nservice_id = \"soak\"\ndrain_delay = \"0s\"\n\n\
         [defaults]\ninterval = \"1s\"\ntimeout = \"300ms\"\nretries = 0\n"
    );
    for index in 0..CHECKS {
        let _ = write!(
            config,
            "\n[[checks]]\nname = \"c{index}\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{dependency}\"\n"
        );
    }
    let config_path = dir.join("soak.toml");
    fs::write(&config_path, config)?;

    // The dependency: a listener that exists for 5 s, then is gone for 5 s.
    let stop = Arc::new(AtomicBool::new(false));
    let flapping = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(listener) = TcpListener::bind(("127.0.0.1", dependency)) {
                    let _ = listener.set_nonblocking(true);
                    let up_until = Instant::now() + UP_AND_DOWN;
                    while Instant::now() < up_until && !stop.load(Ordering::Relaxed) {
                        // Accepted connections close as they drop.
                        while listener.accept().is_ok() {}
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                std::thread::sleep(UP_AND_DOWN);
            }
        })
    };

    let log_path = dir.join("soak.log");
    let log = fs::File::create(&log_path)?;
    let process = Process::native(
        Command::new(Profile::Release.binary(root, "healthd"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .context("starting healthd")?,
    );
    wait_until("healthd's startup probe answering", Duration::from_secs(60), || {
        fetch(port, "/health/startup", None).is_ok()
    })?;
    std::thread::sleep(length);
    drop(process);
    stop.store(true, Ordering::Relaxed);
    let _ = flapping.join();

    let text = fs::read_to_string(&log_path)?;
    let bytes = text.len() as u64;
    let count = |said: &str| text.lines().filter(|line| line.contains(said)).count();
    let mut section = String::new();
    writeln!(
        section,
        "\n### Log volume (cargo xtask bench --soak{})\n\n{CHECKS} tcp checks every 1 s against a port up 5 s and down 5 s, {} s, the default level (info, text), {}:\n",
        if smoke { " --smoke" } else { "" },
        length.as_secs(),
        crate::load::chrono_free_date(),
    )?;
    writeln!(section, "| measure | value |\n|---|---:|")?;
    writeln!(section, "| log bytes | {bytes} |")?;
    writeln!(section, "| log lines | {} |", text.lines().count())?;
    for said in [
        "check status changed",
        "check recovered",
        "check is flapping",
        "check stopped flapping",
        "check still the same",
    ] {
        writeln!(section, "| lines `{said}` | {} |", count(said))?;
    }
    // The lines come early (until each check is found flapping), so a
    // short run says nothing of 15 minutes: only the full run is judged.
    if !smoke {
        writeln!(
            section,
            "| target: under {TARGET_BYTES} bytes in 15 minutes | {} |",
            if bytes < TARGET_BYTES { "met" } else { "not met" }
        )?;
    }
    Ok(section)
}
