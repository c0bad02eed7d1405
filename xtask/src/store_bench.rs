//! The store's part of `cargo xtask bench --scale` (alone: `--store`):
//! 10,000 tcp checks every 10 s with and without a SQLite store (healthd's
//! CPU and RSS, rounds taking turns), then a year of roll-ups for 10,000
//! checks seeded through the store's own write path and queried (the
//! library's `store::bench`, in release), and the file's size.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::load::chrono_free_date;
use crate::scale::{median, rss_kib, runs_total, Instance};
use crate::services::AcceptingListener;

const CHECKS: usize = 10_000;
const INTERVAL: Duration = Duration::from_secs(10);
/// The targets.
const CPU_RATIO_TARGET: f64 = 1.5;
const RSS_TARGET_MIB: f64 = 150.0;
const ONE_CHECK_TARGET_MS: f64 = 10.0;
const PAGE_TARGET_MS: f64 = 50.0;

struct Measured {
    cpu_percent: f64,
    runs_per_second: f64,
    rss_mib: f64,
    written: f64,
}

pub fn run(root: &Path, smoke: bool) -> anyhow::Result<String> {
    let (checks, rounds, window) = if smoke {
        (100, 1, Duration::from_secs(10))
    } else {
        (CHECKS, 2, Duration::from_secs(30))
    };
    // What else the machine was doing: the figures are CPU time of
    // healthd alone, but a busy machine slows the queries.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    let cores = std::thread::available_parallelism().map_or(0, |cores| cores.get());
    let listener = AcceptingListener::start()?;
    let store = root.join("target/xtask/bench-store.db");
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..rounds {
        for stored in [false, true] {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", store.display()));
            }
            let instance = Instance::start(
                root,
                checks,
                INTERVAL,
                listener.port,
                stored.then_some(store.as_path()),
            )?;
            let measured = measure(&instance, window)
                .with_context(|| format!("round {round}, store {stored}"))?;
            eprintln!(
                "{checks} checks, store {stored}: {:.2}% of a core, {:.0} runs/s, {:.1} MiB, {} written",
                measured.cpu_percent, measured.runs_per_second, measured.rss_mib, measured.written
            );
            if stored {
                with.push(measured)
            } else {
                without.push(measured)
            }
        }
    }
    let cpu = |rows: &[Measured]| median(rows.iter().map(|row| row.cpu_percent).collect());
    let rss = |rows: &[Measured]| median(rows.iter().map(|row| row.rss_mib).collect());
    let year = year_of_rollups(root, if smoke { 200 } else { CHECKS })?;

    let mut out = String::new();
    writeln!(out, "### The store\n")?;
    writeln!(
        out,
        "Measured by `cargo xtask bench --store{}` on {} ({cores} cores, load average {load} at the start).\n",
        if smoke { " --smoke" } else { "" },
        chrono_free_date(),
    )?;
    writeln!(
        out,
        "{checks} tcp checks every {} s, {rounds} rounds each with and without `[storage]` (SQLite), \
         taking turns; CPU over {} s windows after settling (healthd's own CPU time); RSS at the \
         window's end; the table shows the median of the rounds.\n",
        INTERVAL.as_secs(),
        window.as_secs()
    )?;
    writeln!(out, "| | healthd CPU, % of one core | runs/s | RSS MiB |\n|---|---:|---:|---:|")?;
    for (label, rows) in [("without a store", &without), ("with the SQLite store", &with)] {
        writeln!(
            out,
            "| {label} | {:.2} | {:.0} | {:.1} |",
            cpu(rows),
            median(rows.iter().map(|row| row.runs_per_second).collect()),
            rss(rows)
        )?;
    }
    let ratio = cpu(&with) / cpu(&without);
    writeln!(
        out,
        "\nCPU with the store: {ratio:.2}× without (target at most {CPU_RATIO_TARGET}×: {}); RSS {:.1} MiB (target under {RSS_TARGET_MIB} MiB: {}).\n",
        met(ratio <= CPU_RATIO_TARGET),
        rss(&with),
        met(rss(&with) < RSS_TARGET_MIB),
    )?;
    writeln!(
        out,
        "A year of roll-ups, seeded through the store's queue and writer (`store::bench`):\n"
    )?;
    for line in &year {
        writeln!(out, "- {line}")?;
    }
    if let Some((one, page)) = year.iter().find_map(|line| uptime_times(line)) {
        writeln!(
            out,
            "\nThe 365-day uptime of one check: {one:.2} ms (target under {ONE_CHECK_TARGET_MS} ms: {}); of a page of 100 checks: {page:.2} ms (target under {PAGE_TARGET_MS} ms: {}).",
            met(one < ONE_CHECK_TARGET_MS),
            met(page < PAGE_TARGET_MS),
        )?;
    }
    Ok(out)
}

fn met(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

/// The times of `store::bench`'s uptime line: one check's and a page's, in ms.
fn uptime_times(line: &str) -> Option<(f64, f64)> {
    let number_after = |marker: &str| -> Option<f64> {
        let rest = &line[line.find(marker)? + marker.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    Some((number_after("one check ")?, number_after("a page of 100 checks ")?))
}

fn measure(instance: &Instance, window: Duration) -> anyhow::Result<Measured> {
    instance.settle();
    let runs_before = runs_total(instance.port)?;
    let (cpu_ns, took) = instance.cpu_over(window)?;
    let runs = runs_total(instance.port)? - runs_before;
    if runs == 0 {
        bail!("no check ran during the window");
    }
    let (_, metrics) = crate::services::fetch(instance.port, "/metrics", None)?;
    let written = metrics
        .lines()
        .find_map(|line| line.strip_prefix("healthd_store_written_total ")?.parse().ok())
        .unwrap_or(0.0);
    Ok(Measured {
        cpu_percent: cpu_ns / took.as_nanos() as f64 * 100.0,
        runs_per_second: runs as f64 / took.as_secs_f64(),
        rss_mib: rss_kib(instance.process.pid(), "VmRSS:")? as f64 / 1024.0,
        written,
    })
}

/// Runs the library's ignored `store::bench` in release; answers its MEASURED lines.
fn year_of_rollups(root: &Path, checks: usize) -> anyhow::Result<Vec<String>> {
    let output = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "test",
            "--release",
            "-p",
            "healthd",
            "--lib",
            "store::bench",
            "--",
            "--ignored",
            "--nocapture",
        ])
        .env("HEALTHD_BENCH_CHECKS", checks.to_string())
        .output()
        .context("running store::bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("store::bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let lines: Vec<String> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("MEASURED "))
        .map(str::to_string)
        .collect();
    eprintln!("{}", lines.join("\n"));
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uptime_times_are_read_off_store_bench_s_line() {
        let line = "uptime over 365 days (5 windows): one check 0.44 ms, a page of 100 checks 39.27 ms (median of 21)";
        assert_eq!(uptime_times(line), Some((0.44, 39.27)));
        assert_eq!(uptime_times("seeded 10 runs"), None);
    }
}
