//! `cargo xtask bench --scale`: what healthd costs as its checks grow.
//! The release build runs 10, 100, 1,000 and 10,000 tcp checks against a
//! local listener; for each, the bench reads healthd's CPU time from
//! /proc over whole check intervals, the runs done meanwhile (from
//! `/metrics`), its peak RSS and the time to `/health/startup` 200, and has
//! wrk probe `/health/live` and `/health/ready` (taking turns with a
//! 10-check reference instance) and the detailed `/health`.
//! Under `--smoke` it runs 10 and 100 checks briefly, to prove it works.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::load::{chrono_free_date, wrk, Expect, Server, Target};
use crate::services::{fetch, free_port, wait_until, AcceptingListener, Process, Profile, WORKERS};

/// What the scale bench runs.
struct Plan {
    smoke: bool,
    /// Numbers of checks, each with its interval. Below 1,000 checks the
    /// interval is shorter, so that runs are many enough to stand out of
    /// what an idle healthd spends (0.1% of a core): a run's cost does not
    /// depend on its interval.
    sizes: Vec<(usize, Duration)>,
    /// CPU is measured over whole intervals covering at least this.
    window: Duration,
    wrk_seconds: u64,
    /// Rounds of probes, each taking turns with the reference instance.
    rounds: usize,
}

const PROBE_CONNECTIONS: u32 = 64;
/// The checks of the instance every size's probe rates are compared with.
const REFERENCE_CHECKS: usize = 10;

const LIVENESS: Target = Target {
    label: "/health/live",
    server: Server::Healthd,
    path: "/health/live",
    authorized: false,
};
const READINESS: Target = Target {
    label: "/health/ready",
    server: Server::Healthd,
    path: "/health/ready",
    authorized: false,
};
const HEALTH: Target =
    Target { label: "/health", server: Server::Healthd, path: "/health", authorized: false };
const METRICS: Target =
    Target { label: "/metrics", server: Server::Healthd, path: "/metrics", authorized: false };

/// What one size measured.
struct Row {
    checks: usize,
    runs_per_second: f64,
    cpu_percent: f64,
    /// Net of what healthd with no checks spends over the same time.
    cpu_us_per_run: f64,
    interval: Duration,
    startup: Duration,
    /// Before the probes, and the peak after them.
    rss_mib: f64,
    peak_rss_mib: f64,
    health_bytes: usize,
    ready_bytes: usize,
    /// Medians over the rounds: requests/s, and the ratio to the
    /// reference instance measured in the same round.
    liveness: (f64, f64),
    readiness: (f64, f64),
    health_rate: f64,
    metrics_rate: f64,
    /// RSS once `/health` and `/metrics` have each been served to
    /// `PROBE_CONNECTIONS` callers at once.
    rss_after_mib: f64,
}

/// Runs the scale part; returns the Markdown section it measured.
pub fn run(root: &Path, smoke: bool) -> anyhow::Result<String> {
    let plan = if smoke {
        Plan {
            smoke,
            sizes: vec![(10, Duration::from_millis(200)), (100, Duration::from_secs(1))],
            window: Duration::from_secs(2),
            wrk_seconds: 1,
            rounds: 1,
        }
    } else {
        Plan {
            smoke,
            sizes: vec![
                (10, Duration::from_millis(200)),
                (100, Duration::from_secs(2)),
                (1_000, Duration::from_secs(10)),
                (10_000, Duration::from_secs(10)),
            ],
            window: Duration::from_secs(20),
            wrk_seconds: 2,
            rounds: 3,
        }
    };
    let listener = AcceptingListener::start()?;
    let idle = Instance::start(root, 0, Duration::from_secs(10), listener.port, None)?;
    idle.settle();
    let (idle_ns, idle_window) = idle.cpu_over(plan.window)?;
    let idle_ns_per_second = idle_ns / idle_window.as_secs_f64();
    drop(idle);
    eprintln!("no checks: {:.3}% of a core", idle_ns_per_second / 1e7);
    let reference =
        Instance::start(root, REFERENCE_CHECKS, Duration::from_secs(10), listener.port, None)?;
    let mut rows = Vec::new();
    for &(checks, interval) in &plan.sizes {
        let instance = Instance::start(root, checks, interval, listener.port, None)?;
        let row = measure(&plan, &instance, &reference, idle_ns_per_second)
            .with_context(|| format!("the scale bench with {checks} checks"))?;
        eprintln!(
            "{checks} checks: {:.2}% of a core, {:.1} µs per run, started in {:.2} s, {:.1} MiB peak",
            row.cpu_percent,
            row.cpu_us_per_run,
            row.startup.as_secs_f64(),
            row.peak_rss_mib
        );
        rows.push(row);
    }
    section(&plan, idle_ns_per_second, &rows)
}

/// One healthd with some number of tcp checks, started and ready.
pub(crate) struct Instance {
    pub(crate) process: Process,
    pub(crate) port: u16,
    checks: usize,
    interval: Duration,
    startup: Duration,
    config_path: PathBuf,
}

impl Instance {
    /// With `store`, the checks' runs go to a SQLite store at that path.
    pub(crate) fn start(
        root: &Path,
        checks: usize,
        interval: Duration,
        target_port: u16,
        store: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let dir = root.join("target/xtask");
        fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let config_path = dir.join(format!("scale-{checks}-{port}.toml"));
        let mut text = config(port, checks, interval, target_port);
        if let Some(store) = store {
            let _ = write!(text, "\n[storage]\npath = \"{}\"\n", store.display());
        }
        fs::write(&config_path, text)?;
        let launched = Instant::now();
        // The access log is on, as in production, but goes nowhere: disk
        // writes on a shared machine would blur what healthd itself costs.
        let process = Process::native(
            Command::new(Profile::Release.binary(root, "healthd"))
                .arg("--config")
                .arg(&config_path)
                .args(["--log-format", "json"])
                .stdout(Stdio::null())
                .spawn()
                .context("starting healthd")?,
        );
        wait_until("healthd's startup probe answering 200", Duration::from_secs(120), || {
            fetch(port, "/health/startup", None).is_ok_and(|(status, _)| status == 200)
        })?;
        let startup = launched.elapsed();
        Ok(Instance { process, port, checks, interval, startup, config_path })
    }

    /// Checks that start together keep their phase: a window that begins
    /// half an interval after a burst of runs, 2 s or more past the first
    /// one, holds whole bursts and no start-up work.
    pub(crate) fn settle(&self) {
        let intervals = whole_intervals(Duration::from_secs(2), self.interval);
        std::thread::sleep(self.interval * intervals + self.interval / 2);
    }

    /// healthd's CPU time (ns) over whole intervals covering at least
    /// `window`, and the time that took.
    pub(crate) fn cpu_over(&self, window: Duration) -> anyhow::Result<(f64, Duration)> {
        let pid = self.process.pid();
        let (before, threads) = cpu_time_ns(pid)?;
        let started = Instant::now();
        std::thread::sleep(self.interval * whole_intervals(window, self.interval));
        let (after, threads_after) = cpu_time_ns(pid)?;
        if threads != threads_after {
            // A thread that ended took its time with it.
            bail!("healthd's threads changed during the window: {threads:?} -> {threads_after:?}");
        }
        Ok(((after - before) as f64, started.elapsed()))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.config_path);
    }
}

/// healthd's CPU time in nanoseconds, summed over its threads from
/// /proc/PID/task/*/schedstat (/proc/PID/stat counts in 10 ms ticks, too
/// coarse for 10 checks), and the threads it was summed over.
fn cpu_time_ns(pid: u32) -> anyhow::Result<(u64, Vec<u64>)> {
    let mut total = 0;
    let mut threads = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let stat = fs::read_to_string(entry.path().join("schedstat"))?;
        let on_cpu: u64 = stat.split_whitespace().next().context("empty schedstat")?.parse()?;
        total += on_cpu;
        threads.push(entry.file_name().to_string_lossy().parse()?);
    }
    threads.sort_unstable();
    Ok((total, threads))
}

fn whole_intervals(at_least: Duration, interval: Duration) -> u32 {
    at_least.as_nanos().div_ceil(interval.as_nanos()).max(1) as u32
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn measure(
    plan: &Plan,
    instance: &Instance,
    reference: &Instance,
    idle_ns_per_second: f64,
) -> anyhow::Result<Row> {
    let (port, pid) = (instance.port, instance.process.pid());
    instance.settle();
    let runs_before = runs_total(port)?;
    let (cpu_ns, window) = instance.cpu_over(plan.window)?;
    let runs = runs_total(port)? - runs_before;
    if runs == 0 {
        bail!("no check ran during the window");
    }
    let (status, health) = fetch(port, "/health", None)?;
    if status != 200 || !health.contains("\"checks\"") {
        bail!("the detailed /health is not a 200 with checks: {status}");
    }
    let (_, ready) = fetch(port, "/health/ready", None)?;
    let rss_mib = rss_kib(pid, "VmRSS:")? as f64 / 1024.0;

    // Probes take turns with the reference instance, round by round, so
    // that the ratios hold whatever else the machine does meanwhile.
    let reference_pid = reference.process.pid();
    let mut rates: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..plan.rounds {
        for (index, target) in [LIVENESS, READINESS].iter().enumerate() {
            let yardstick = wrk(
                reference.port,
                target,
                PROBE_CONNECTIONS,
                plan.wrk_seconds,
                reference_pid,
                Expect::Success,
            )?;
            let measured =
                wrk(port, target, PROBE_CONNECTIONS, plan.wrk_seconds, pid, Expect::Success)?;
            rates[index].push((
                measured.requests_per_second,
                measured.requests_per_second / yardstick.requests_per_second,
            ));
        }
    }
    let summary = |rates: &[(f64, f64)]| {
        (
            median(rates.iter().map(|rate| rate.0).collect()),
            median(rates.iter().map(|rate| rate.1).collect()),
        )
    };
    let health_rate =
        wrk(port, &HEALTH, PROBE_CONNECTIONS, plan.wrk_seconds, pid, Expect::Success)?
            .requests_per_second;
    let metrics_rate =
        wrk(port, &METRICS, PROBE_CONNECTIONS, plan.wrk_seconds, pid, Expect::Success)?
            .requests_per_second;
    // wrk stops with its callers' answers half sent (a 16 MB `/metrics`
    // takes seconds to 64 callers): the figure is taken once healthd has
    // seen them go, not while it still holds what it was sending them.
    wait_until("healthd closing wrk's connections", Duration::from_secs(10), || {
        open_connections(port).is_ok_and(|open| open == 0)
    })?;
    let rss_after_mib = rss_kib(pid, "VmRSS:")? as f64 / 1024.0;
    let peak_rss_mib = rss_kib(pid, "VmHWM:")? as f64 / 1024.0;
    let net_ns = (cpu_ns - idle_ns_per_second * window.as_secs_f64()).max(0.0);
    Ok(Row {
        checks: instance.checks,
        interval: instance.interval,
        rss_mib,
        runs_per_second: runs as f64 / window.as_secs_f64(),
        cpu_percent: cpu_ns / window.as_nanos() as f64 * 100.0,
        cpu_us_per_run: net_ns / 1e3 / runs as f64,
        startup: instance.startup,
        peak_rss_mib,
        health_bytes: health.len(),
        ready_bytes: ready.len(),
        liveness: summary(&rates[0]),
        readiness: summary(&rates[1]),
        health_rate,
        metrics_rate,
        rss_after_mib,
    })
}

/// A size line of /proc/PID/status (`VmRSS:`, `VmHWM:`), in KiB.
pub(crate) fn rss_kib(pid: u32, line: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let found = status.lines().find_map(|text| text.strip_prefix(line)).context("no such line")?;
    Ok(found.split_whitespace().next().context("an empty line")?.parse()?)
}

/// Connections on healthd's side of `port` that are open or that the
/// caller has closed and healthd not yet (ESTABLISHED, CLOSE_WAIT).
fn open_connections(port: u16) -> anyhow::Result<usize> {
    let mut open = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in fs::read_to_string(table)?.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { continue };
            let local_port =
                local.rsplit(':').next().and_then(|hex| u16::from_str_radix(hex, 16).ok());
            open += usize::from(local_port == Some(port) && matches!(*state, "01" | "08"));
        }
    }
    Ok(open)
}

/// The sum of `healthd_check_runs_total` over every check.
pub(crate) fn runs_total(port: u16) -> anyhow::Result<u64> {
    let (status, metrics) = fetch(port, "/metrics", None)?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    let mut total = 0;
    for line in metrics.lines().filter(|line| line.starts_with("healthd_check_runs_total{")) {
        let value = line.rsplit(' ').next().context("a sample without a value")?;
        total += value.parse::<u64>().with_context(|| format!("odd sample {line:?}"))?;
    }
    Ok(total)
}

/// A quarter of the interval, at most 2.5 s.
fn timeout(interval: Duration) -> Duration {
    (interval / 4).min(Duration::from_millis(2500))
}

fn config(port: u16, checks: usize, interval: Duration, target_port: u16) -> String {
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
service_id = "scale"
workers = {WORKERS}
drain_delay = "0s"

[access]
details = "always"
allow = ["127.0.0.0/8"]

[defaults]
interval = "{}ms"
timeout = "{}ms"
retries = 0
"#,
        interval.as_millis(),
        timeout(interval).as_millis()
    );
    for index in 0..checks {
        let _ = write!(
            text,
            "\n[[checks]]\nname = \"tcp-{index:05}\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{target_port}\"\n"
        );
    }
    text
}

fn section(plan: &Plan, idle_ns_per_second: f64, rows: &[Row]) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "## Scale: checks against one core\n")?;
    writeln!(
        out,
        "Measured by `cargo xtask bench --scale{}` on {}: healthd (release, {WORKERS} workers, `details = \"always\"`, access log on, to /dev/null) with N tcp checks (timeout a quarter of the interval, at most 2.5 s; no retries) against a local listener that accepts and closes.\n",
        if plan.smoke { " --smoke" } else { "" },
        chrono_free_date(),
    )?;
    writeln!(out, "- CPU: healthd's time on CPU (/proc/PID/task/*/schedstat) over whole intervals covering {} s or more, from half an interval after a burst of runs and 2 s or more after start-up; runs counted from `/metrics`. Per run: net of what healthd with no checks spends meanwhile ({:.3}% of a core); below 1,000 checks the interval is shorter so that the runs stand out of that (a run costs the same whatever its interval)", plan.window.as_secs(), idle_ns_per_second / 1e7)?;
    writeln!(out, "- startup: from exec to `/health/startup` 200; RSS: before the probes, the peak (VmHWM) after them, and once `/health` and `/metrics` have each been served to {PROBE_CONNECTIONS} callers at once (read when healthd has closed their connections)")?;
    writeln!(out, "- probes: wrk, {PROBE_CONNECTIONS} connections, {} s, on the same 2 cores; liveness and readiness take turns with a reference healthd of {REFERENCE_CHECKS} checks within each of {} rounds; rates and ratios are medians over the rounds\n", plan.wrk_seconds, plan.rounds)?;
    writeln!(out, "| checks | interval | runs/s | healthd CPU, % of one core | CPU µs per run | startup | RSS (peak) | `/health` bytes | `/health/ready` bytes | `/health/live` req/s (× ref.) | `/health/ready` req/s (× ref.) | `/health` req/s | `/metrics` req/s | RSS after `/health` and `/metrics` |")?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for row in rows {
        writeln!(
            out,
            "| {} | {} s | {:.1} | {:.2} | {:.1} | {:.2} s | {:.1} MiB ({:.1}) | {} | {} | {:.0} ({:.2}) | {:.0} ({:.2}) | {:.0} | {:.0} | {:.1} MiB |",
            thousands(row.checks),
            row.interval.as_secs_f64(),
            row.runs_per_second,
            row.cpu_percent,
            row.cpu_us_per_run,
            row.startup.as_secs_f64(),
            row.rss_mib,
            row.peak_rss_mib,
            thousands(row.health_bytes),
            thousands(row.ready_bytes),
            row.liveness.0,
            row.liveness.1,
            row.readiness.0,
            row.readiness.1,
            row.health_rate,
            row.metrics_rate,
            row.rss_after_mib,
        )?;
    }
    let (first, last) = (rows.first().context("no rows")?, rows.last().context("no rows")?);
    let per_run: Vec<f64> = rows.iter().map(|row| row.cpu_us_per_run).collect();
    let spread = per_run.iter().copied().fold(f64::MIN, f64::max)
        / per_run.iter().copied().fold(f64::MAX, f64::min);
    writeln!(out, "\n| target | measured | met |\n|---|---:|:---:|")?;
    let verdict = |met: bool| if met { "yes" } else { "**no**" };
    let at_10_s = |row: &&Row| row.checks == 1_000 && row.interval == Duration::from_secs(10);
    if let Some(thousand) = rows.iter().find(at_10_s) {
        writeln!(
            out,
            "| 1,000 checks at 10 s below 5% of one core | {:.2}% | {} |",
            thousand.cpu_percent,
            verdict(thousand.cpu_percent < 5.0)
        )?;
    }
    writeln!(
        out,
        "| CPU per run flat within 2x from {} to {} checks (highest / lowest) | {spread:.2}x | {} |",
        thousands(first.checks),
        thousands(last.checks),
        verdict(spread <= 2.0)
    )?;
    if last.checks == 10_000 {
        writeln!(
            out,
            "| 10,000 checks start in under 5 s | {:.2} s | {} |",
            last.startup.as_secs_f64(),
            verdict(last.startup < Duration::from_secs(5))
        )?;
        writeln!(
            out,
            "| 10,000 checks below 100 MiB RSS once `/health` and `/metrics` have each been served to {PROBE_CONNECTIONS} callers at once | {:.1} MiB | {} |",
            last.rss_after_mib,
            verdict(last.rss_after_mib < 100.0)
        )?;
    }
    for (name, rates) in [("liveness", last.liveness), ("readiness", last.readiness)] {
        writeln!(
            out,
            "| {name} probe rate with {} checks × the {REFERENCE_CHECKS}-check reference (independent: 0.90 or more) | {:.2} | {} |",
            thousands(last.checks),
            rates.1,
            verdict(rates.1 >= 0.9)
        )?;
    }
    Ok(out)
}

pub fn thousands(value: usize) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
