//! `cargo xtask bench [--smoke | --scale]`: healthd against bare actix-web, side by
//! side on loopback, with a real PostgreSQL behind healthd's checks.
//!
//! Both servers are release builds with the same worker count. wrk drives
//! each target in turn, round after round, so drift on a shared machine
//! hits all of them; ratios to the baseline are taken within a round, and
//! the table shows their medians. Callgrind then counts instructions per
//! request, a figure the machine's noise does not move. `--smoke` is one
//! short round at 64 connections, to prove the bench works (CI); its
//! numbers are not judged. `--scale` runs only the part that grows the
//! number of checks (`scale.rs`); `--smoke` runs a short one of it too.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::project_root;
use crate::scale;
use crate::services::{
    fetch, free_port, start_baseline, start_healthd, wait_until, Dependencies, Launch, Profile,
    CHECK_INTERVAL_SECONDS, TOKEN, WORKERS,
};

struct Plan {
    smoke: bool,
    seconds: u64,
    levels: Vec<u32>,
    rounds: usize,
    /// Requests counted per target under callgrind.
    counted_requests: usize,
}

/// One wrk run.
#[derive(Clone, Copy, Debug)]
pub struct Measurement {
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_request: f64,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Server {
    Healthd,
    Baseline,
}

pub struct Target {
    pub label: &'static str,
    pub server: Server,
    pub path: &'static str,
    pub authorized: bool,
}

const TARGETS: [Target; 5] = [
    Target {
        label: "baseline (static JSON)",
        server: Server::Baseline,
        path: "/health",
        authorized: false,
    },
    Target {
        label: "/health anonymous",
        server: Server::Healthd,
        path: "/health",
        authorized: false,
    },
    Target {
        label: "/health authorized",
        server: Server::Healthd,
        path: "/health",
        authorized: true,
    },
    Target {
        label: "/health/live",
        server: Server::Healthd,
        path: "/health/live",
        authorized: false,
    },
    Target {
        label: "/health/ready",
        server: Server::Healthd,
        path: "/health/ready",
        authorized: false,
    },
];

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let smoke = args.contains(&"--smoke");
    let root = project_root();
    Profile::Release.build(&root)?;
    ensure_installed("wrk", "wrk")?;
    let benchmarks = root.join("BENCHMARKS.md");
    if args.contains(&"--scale") {
        // With --smoke: the short scale part alone, its numbers not kept.
        let section = scale::run(&root, smoke)?;
        println!("{section}");
        if !smoke {
            write_section(&benchmarks, SCALE_SECTION, &section)?;
            eprintln!("wrote {}", benchmarks.display());
        }
        return Ok(());
    }
    let plan = if smoke {
        Plan { smoke, seconds: 2, levels: vec![64], rounds: 1, counted_requests: 100 }
    } else {
        Plan {
            smoke,
            seconds: 3,
            levels: vec![1, 16, 64, 256],
            rounds: 5,
            counted_requests: 20_000,
        }
    };
    ensure_installed("valgrind", "valgrind")?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let section = runtime.block_on(bench(&root, &plan))?;
    if smoke {
        // The scale part too, briefly, so that CI proves it works.
        let scale = scale::run(&root, true)?;
        println!("{scale}");
        let path = root.join("target/bench/BENCHMARKS-smoke.md");
        fs::write(&path, format!("{DOCUMENT_TITLE}{section}\n{scale}"))?;
        eprintln!("wrote {}", path.display());
    } else {
        write_section(&benchmarks, PROBE_SECTION, &section)?;
        eprintln!("wrote {}", benchmarks.display());
    }
    Ok(())
}

const DOCUMENT_TITLE: &str = "# Benchmarks\n\n";
/// BENCHMARKS.md holds one section per part of the bench, each rewritten
/// only by its own part.
const PROBE_SECTION: &str = "probe paths (cargo xtask bench)";
const SCALE_SECTION: &str = "scale (cargo xtask bench --scale)";

/// Replaces the text between `<!-- begin NAME -->` and `<!-- end NAME -->`
/// in `path` (appending the section when it is missing), leaving the rest.
fn write_section(path: &Path, name: &str, content: &str) -> anyhow::Result<()> {
    let (begin, end) = (format!("<!-- begin {name} -->\n"), format!("<!-- end {name} -->\n"));
    let mut document = fs::read_to_string(path).unwrap_or_else(|_| DOCUMENT_TITLE.to_string());
    let section = format!("{begin}{content}{end}");
    match (document.find(&begin), document.find(&end)) {
        (Some(start), Some(stop)) if start < stop => {
            document.replace_range(start..stop + end.len(), &section);
        }
        _ => {
            if !document.ends_with("\n\n") {
                document.push('\n');
            }
            document.push_str(&section);
        }
    }
    fs::write(path, document)?;
    Ok(())
}

/// Installs a Debian package when its program is missing (as root).
pub fn ensure_installed(program: &str, package: &str) -> anyhow::Result<()> {
    if Command::new(program).arg("--version").output().is_ok() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{program} is not installed: run `apt-get install {package}` (as root)");
    }
    eprintln!("installing {package} from the OS packages");
    let script = format!(
        "apt-get install -y {package} >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y {package} >/dev/null)"
    );
    if !Command::new("sh").args(["-c", &script]).status()?.success() {
        bail!("apt-get install {package} failed");
    }
    Ok(())
}

/// utime + stime of a process, in microseconds.
pub fn cpu_time_us(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').context("odd /proc stat")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_second * 1e6)
}

/// Peak resident set size of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("odd VmHWM")?.parse()?)
}

fn parse_wrk_duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number,
        "ms" => number * 1e3,
        "s" => number * 1e6,
        _ => return None,
    })
}

/// What the answers under load must be.
#[derive(Clone, Copy, PartialEq)]
pub enum Expect {
    Success,
    Unavailable,
}

pub fn wrk(
    port: u16,
    target: &Target,
    connections: u32,
    seconds: u64,
    pid: u32,
    expect: Expect,
) -> anyhow::Result<Measurement> {
    let threads = connections.clamp(1, 2).to_string();
    let mut command = Command::new("wrk");
    command.args([
        "-t",
        &threads,
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
        "--latency",
    ]);
    if target.authorized {
        command.args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
    }
    command.arg(format!("http://127.0.0.1:{port}{}", target.path));
    let cpu_before = cpu_time_us(pid)?;
    let output = command.stderr(Stdio::inherit()).output().context("running wrk")?;
    let cpu_after = cpu_time_us(pid)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let unexpected_status = match expect {
        Expect::Success => text.contains("Non-2xx"),
        // Every answer must be a 503: wrk counts them all as non-2xx.
        Expect::Unavailable => !text.contains("Non-2xx or 3xx responses"),
    };
    if !output.status.success() || unexpected_status || text.contains("Socket errors") {
        bail!("wrk against {} reported errors:\n{text}", target.label);
    }
    let value = |prefix: &str| {
        text.lines().find_map(|line| {
            line.trim_start().strip_prefix(prefix).map(|rest| rest.trim().to_string())
        })
    };
    let requests_per_second: f64 = value("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context("no Requests/sec in wrk's output")?;
    let p50_us = value("50%").and_then(|v| parse_wrk_duration_us(&v)).context("no p50")?;
    let p99_us = value("99%").and_then(|v| parse_wrk_duration_us(&v)).context("no p99")?;
    let requests = requests_per_second * seconds as f64;
    Ok(Measurement {
        requests_per_second,
        p50_us,
        p99_us,
        cpu_us_per_request: (cpu_after - cpu_before) / requests,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One target's rounds, each next to its yardstick measured in the same
/// round: ratios are taken round by round, then their median, so that a
/// slow stretch of the machine hits both sides of a ratio.
struct Rounds {
    pairs: Vec<(Measurement, Measurement)>,
}

impl Rounds {
    fn median_of(&self, value: impl Fn(&(Measurement, Measurement)) -> f64) -> f64 {
        median(self.pairs.iter().map(value).collect())
    }

    fn requests_per_second(&self) -> f64 {
        self.median_of(|(m, _)| m.requests_per_second)
    }

    fn throughput_ratio(&self) -> f64 {
        self.median_of(|(m, y)| m.requests_per_second / y.requests_per_second)
    }

    fn p99_ratio(&self) -> f64 {
        self.median_of(|(m, y)| m.p99_us / y.p99_us)
    }
}

struct Runner<'a> {
    plan: &'a Plan,
    healthd: (u16, u32),
    baseline: (u16, u32),
}

impl Runner<'_> {
    fn measure(
        &self,
        target: &Target,
        connections: u32,
        expect: Expect,
    ) -> anyhow::Result<Measurement> {
        let (port, pid) = match target.server {
            Server::Healthd => self.healthd,
            Server::Baseline => self.baseline,
        };
        wrk(port, target, connections, self.plan.seconds, pid, expect)
    }
}

async fn bench(root: &Path, plan: &Plan) -> anyhow::Result<String> {
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let dependencies = Dependencies::start(root, Profile::Release).await?;
    let postgres = &dependencies.postgres;
    let healthd_port = free_port()?;
    let access_log = out_dir.join("access.log");
    let healthd = start_healthd(
        root,
        Profile::Release,
        Launch::Native,
        healthd_port,
        &dependencies,
        fs::File::create(&access_log)?.into(),
    )?;
    let (_, report) = fetch(healthd_port, "/health", Some(TOKEN))?;
    if !report.contains("db:responseTime") || !report.contains(r#""status":"pass""#) {
        bail!("healthd is not healthy before the bench: {report}");
    }
    let baseline_port = free_port()?;
    let baseline = start_baseline(
        root,
        Profile::Release,
        Launch::Native,
        baseline_port,
        WORKERS,
        report.len(),
    )?;
    let runner = Runner {
        plan,
        healthd: (healthd_port, healthd.pid()),
        baseline: (baseline_port, baseline.pid()),
    };

    let started = Instant::now();
    let statements_before = postgres.executed_statements().await;
    let mut grid: Vec<(u32, &Target, Rounds)> = Vec::new();
    for &connections in &plan.levels {
        let mut rounds: Vec<Vec<Measurement>> = vec![Vec::new(); TARGETS.len()];
        for _ in 0..plan.rounds {
            for (index, target) in TARGETS.iter().enumerate() {
                rounds[index].push(runner.measure(target, connections, Expect::Success)?);
            }
        }
        // TARGETS[0] is the baseline: every target's yardstick.
        let yardstick = rounds[0].clone();
        for (target, measurements) in TARGETS.iter().zip(rounds) {
            let pairs = measurements.into_iter().zip(yardstick.iter().copied()).collect();
            grid.push((connections, target, Rounds { pairs }));
        }
    }
    let statements_after = postgres.executed_statements().await;
    let load_minutes = started.elapsed().as_secs_f64() / 60.0;
    let probes: f64 = grid
        .iter()
        .filter(|(_, target, _)| target.server == Server::Healthd)
        .flat_map(|(_, _, rounds)| &rounds.pairs)
        .map(|(m, _)| m.requests_per_second * plan.seconds as f64)
        .sum();

    let frozen = frozen_rounds(root, &runner).await?;

    let healthd_rss = peak_rss_kib(healthd.pid())?;
    let baseline_rss = peak_rss_kib(baseline.pid())?;
    drop((healthd, baseline));
    let instructions = count_instructions(root, plan, &dependencies, report.len())?;
    let log_lines = count_access_lines(&access_log)?;
    remove_bench_output(&out_dir)?;

    let mut table = String::new();
    writeln!(table, "| connections | target | requests/s | × baseline | p50 µs | p99 µs | p99 × baseline | CPU µs/request |")?;
    writeln!(table, "|---:|---|---:|---:|---:|---:|---:|---:|")?;
    for (connections, target, rounds) in &grid {
        writeln!(
            table,
            "| {connections} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.1} |",
            target.label,
            rounds.requests_per_second(),
            rounds.throughput_ratio(),
            rounds.median_of(|(m, _)| m.p50_us),
            rounds.median_of(|(m, _)| m.p99_us),
            rounds.p99_ratio(),
            rounds.median_of(|(m, _)| m.cpu_us_per_request),
        )?;
    }
    writeln!(
        table,
        "\nPostgreSQL frozen (SIGSTOP) against running, {FROZEN_CONNECTIONS} connections, {} rounds of {} s: a second healthd, configured alike, whose PostgreSQL is frozen and whose db check has timed out (every answer a 503 from the snapshot), takes turns with the first within each round:\n",
        frozen.first().map_or(0, |(_, rounds)| rounds.pairs.len()),
        plan.seconds
    )?;
    writeln!(table, "| target | requests/s running | requests/s frozen | p99 µs running | p99 µs frozen | p99 frozen × running |")?;
    writeln!(table, "|---|---:|---:|---:|---:|---:|")?;
    for (target, rounds) in &frozen {
        writeln!(
            table,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            target.label,
            rounds.median_of(|(_, running)| running.requests_per_second),
            rounds.requests_per_second(),
            rounds.median_of(|(_, running)| running.p99_us),
            rounds.median_of(|(frozen, _)| frozen.p99_us),
            rounds.p99_ratio(),
        )?;
    }
    writeln!(
        table,
        "\nInstructions per request, counted by callgrind over {} requests on one keep-alive connection after 500 to warm up (user space, every thread of the server, the log writer's included):\n",
        plan.counted_requests
    )?;
    writeln!(table, "| target | instructions/request | × baseline |")?;
    writeln!(table, "|---|---:|---:|")?;
    let base = instructions.first().map(|(_, count)| *count).context("no baseline count")?;
    for (label, count) in &instructions {
        writeln!(table, "| {label} | {count:.0} | {:.2} |", count / base)?;
    }
    let statements = (statements_after - statements_before) as f64;
    writeln!(table, "\n| measure | value |\n|---|---:|")?;
    writeln!(table, "| probes sent to healthd during the load | {probes:.0} |")?;
    writeln!(
        table,
        "| PostgreSQL statements during the load | {statements:.0} in {:.1} min |",
        load_minutes
    )?;
    writeln!(table, "| PostgreSQL statements per minute | {:.1} |", statements / load_minutes)?;
    writeln!(
        table,
        "| statements per minute the check interval implies ({CHECK_INTERVAL_SECONDS} s, one `SELECT 1` a run) | {:.1} |",
        60.0 / CHECK_INTERVAL_SECONDS as f64
    )?;
    writeln!(table, "| healthd peak RSS | {:.1} MiB |", healthd_rss as f64 / 1024.0)?;
    writeln!(table, "| baseline peak RSS | {:.1} MiB |", baseline_rss as f64 / 1024.0)?;
    writeln!(table, "| access-log lines written (JSON, to a file) | {log_lines} |")?;

    println!("{table}");
    benchmarks_document(plan, &table)
}

/// Counts the access log's lines with `grep`, which reads the gigabytes
/// of a full run far faster than a debug-built xtask would.
fn count_access_lines(access_log: &Path) -> anyhow::Result<usize> {
    let output = Command::new("grep")
        .args(["--count", "--fixed-strings", "healthd::access"])
        .arg(access_log)
        .output()
        .context("running grep")?;
    // grep exits 1 when no line matches: a count of 0, not an error.
    if output.status.code().is_none_or(|code| code > 1) {
        bail!("grep failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

/// Removes the logs and callgrind files the bench wrote in `dir`: a full
/// run writes gigabytes of access log.
fn remove_bench_output(dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.ends_with(".log") || name.starts_with("callgrind.") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Connections for the frozen-database comparison.
const FROZEN_CONNECTIONS: u32 = 64;
/// Rounds of the frozen-database comparison: p99 on a saturated two-core
/// machine follows the scheduler's time slices, so it takes many pairs
/// for their median to settle.
const FROZEN_ROUNDS: usize = 10;

/// `/health` of two healthd instances, alike but for their database: one
/// PostgreSQL running, the other frozen (SIGSTOP) once healthd is up.
/// Taking turns within each round, they meet the same machine, and no
/// round waits for a check to notice a change. Each pair is (frozen,
/// running).
async fn frozen_rounds(
    root: &Path,
    runner: &Runner<'_>,
) -> anyhow::Result<Vec<(&'static Target, Rounds)>> {
    let dependencies = Dependencies::start(root, Profile::Release).await?;
    let port = free_port()?;
    let log = fs::File::create(root.join("target/bench/access-frozen.log"))?;
    let healthd =
        start_healthd(root, Profile::Release, Launch::Native, port, &dependencies, log.into())?;
    dependencies.postgres.freeze();
    // A run that meets the frozen database takes its timeout; the next
    // run starts an interval later.
    wait_until("the db check timing out", Duration::from_secs(3 * CHECK_INTERVAL_SECONDS), || {
        fetch(port, "/health", Some(TOKEN))
            .is_ok_and(|(status, body)| status == 503 && body.contains("timed out"))
    })?;
    let frozen = Runner { healthd: (port, healthd.pid()), ..*runner };
    let targets = [&TARGETS[1], &TARGETS[2]];
    let rounds = if runner.plan.smoke { 1 } else { FROZEN_ROUNDS };
    let mut pairs: Vec<Vec<(Measurement, Measurement)>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (index, target) in targets.iter().enumerate() {
            let running = runner.measure(target, FROZEN_CONNECTIONS, Expect::Success)?;
            let frozen = frozen.measure(target, FROZEN_CONNECTIONS, Expect::Unavailable)?;
            pairs[index].push((frozen, running));
        }
    }
    dependencies.postgres.thaw();
    Ok(targets.into_iter().zip(pairs.into_iter().map(|pairs| Rounds { pairs })).collect())
}

/// Each target's instructions per request, the baseline's first, with
/// each server run under callgrind in turn.
fn count_instructions(
    root: &Path,
    plan: &Plan,
    dependencies: &Dependencies,
    body_bytes: usize,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let mut counts = Vec::new();
    for server in [Server::Baseline, Server::Healthd] {
        let port = free_port()?;
        let process = match server {
            Server::Baseline => start_baseline(
                root,
                Profile::Release,
                Launch::Callgrind,
                port,
                WORKERS,
                body_bytes,
            )?,
            Server::Healthd => {
                let log = fs::File::create(root.join("target/bench/access-callgrind.log"))?;
                start_healthd(
                    root,
                    Profile::Release,
                    Launch::Callgrind,
                    port,
                    dependencies,
                    log.into(),
                )?
            }
        };
        let counter = process.instrumented().context("not under callgrind")?;
        for target in TARGETS.iter().filter(|target| target.server == server) {
            let token = target.authorized.then_some(TOKEN);
            let count = counter
                .count_requests(port, target.path, token, plan.counted_requests)
                .with_context(|| format!("counting instructions for {}", target.label))?;
            eprintln!("{}: {count:.0} instructions per request", target.label);
            counts.push((target.label, count));
        }
    }
    Ok(counts)
}

pub fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn benchmarks_document(plan: &Plan, table: &str) -> anyhow::Result<String> {
    let cpu = fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory =
        fs::read_to_string("/proc/meminfo")?.lines().next().unwrap_or_default().to_string();
    let lock = fs::read_to_string(project_root().join("Cargo.lock"))?;
    let actix = lock
        .split("name = \"actix-web\"\nversion = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("?");
    let mut document = String::new();
    writeln!(
        document,
        "Measured by `cargo xtask bench{}` on {}.\n",
        if plan.smoke { " --smoke" } else { "" },
        chrono_free_date()
    )?;
    writeln!(document, "- machine: {cpu}, {cores} cores, {memory}")?;
    writeln!(
        document,
        "- {}; actix-web {actix}; {}",
        command_output("rustc", &["--version"]),
        command_output("wrk", &["--version"])
    )?;
    writeln!(
        document,
        "- healthd (release) and the baseline (`examples/baseline.rs`, bare actix-web returning a fixed JSON body as large as healthd's authorized `/health`) each run {WORKERS} workers; wrk runs on the same 2 cores"
    )?;
    writeln!(
        document,
        "- healthd checks a throwaway PostgreSQL, a local HTTP server (http and tcp checks) and the disk every {CHECK_INTERVAL_SECONDS} s; a bearer token is configured; the access log is on, JSON, written to a file"
    )?;
    writeln!(
        document,
        "- {} rounds of {} s; targets take turns within a round, the baseline first; each figure is the median over the rounds, and each ratio the median of the ratios taken within a round\n",
        plan.rounds, plan.seconds
    )?;
    document.push_str(table);
    Ok(document)
}

/// Today's date from `date`, to keep chrono out of xtask.
pub fn chrono_free_date() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}
