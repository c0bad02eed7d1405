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
//! `--instructions` runs only the callgrind count (to compare two builds);
//! `--soak` the log-volume soak (`soak.rs`).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::callgrind;
use crate::load::{
    chrono_free_date, command_output, ensure_installed, peak_rss_kib, wrk, Expect, Measurement,
    Server, Target,
};
use crate::project_root;
use crate::scale;
use crate::services::{
    fetch, free_port, start_baseline, start_healthd, start_healthd_with, wait_until, Dependencies,
    Details, Launch, Process, Profile, Variant, CHECK_INTERVAL_SECONDS, TOKEN, WORKERS,
};

struct Plan {
    smoke: bool,
    seconds: u64,
    levels: Vec<u32>,
    rounds: usize,
    /// Rounds at `JUDGED_CONNECTIONS`: more, for medians that hold.
    judged_rounds: usize,
    /// Requests counted per target under callgrind.
    counted_requests: usize,
}

impl Target {
    /// Whether the targets apply: every path with the access log on.
    fn judged(&self) -> bool {
        self.server != Server::AccessLogOff
    }
}

/// The probe paths, each measured against a baseline whose body is as
/// large as the path's answer; the last shows what the access log costs.
const TARGETS: [Target; 6] = [
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
        label: "/health, details = \"always\"",
        server: Server::DetailsAlways,
        path: "/health",
        authorized: false,
    },
    Target {
        label: "/health/live, access log off (not judged)",
        server: Server::AccessLogOff,
        path: "/health/live",
        authorized: false,
    },
];

const ANONYMOUS: &Target = &TARGETS[2];
const AUTHORIZED: &Target = &TARGETS[3];

const BASELINE: Target = Target {
    label: "baseline (static JSON)",
    server: Server::Baseline,
    path: "/health",
    authorized: false,
};

/// The connections at which the targets are judged.
const JUDGED_CONNECTIONS: u32 = 64;
/// Each path's requests/s must reach this share of its baseline's...
const JUDGED_THROUGHPUT: f64 = 0.95;
/// ...and its p99 must stay within this multiple of the baseline's.
const JUDGED_P99: f64 = 1.25;

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let smoke = args.contains(&"--smoke");
    let root = project_root();
    Profile::Release.build(&root)?;
    let benchmarks = root.join("BENCHMARKS.md");
    if args.contains(&"--page") {
        let section = crate::page_bench::run(&root, smoke)?;
        println!("{section}");
        if !smoke {
            write_section(&benchmarks, PAGE_SECTION, &section)?;
            eprintln!("wrote {}", benchmarks.display());
        }
        return Ok(());
    }
    ensure_installed("wrk", "wrk")?;
    if args.contains(&"--soak") {
        let section = crate::soak::run(&root, smoke)?;
        println!("{section}");
        if !smoke {
            write_section(&benchmarks, SOAK_SECTION, &section)?;
            eprintln!("wrote {}", benchmarks.display());
        }
        return Ok(());
    }
    if args.contains(&"--store") {
        let section = crate::store_bench::run(&root, smoke)?;
        println!("{section}");
        if !smoke {
            write_section(&benchmarks, STORE_SECTION, &section)?;
            eprintln!("wrote {}", benchmarks.display());
        }
        return Ok(());
    }
    if args.contains(&"--scale") {
        // With --smoke: the short scale part alone, its numbers not kept.
        let store = crate::store_bench::run(&root, smoke)?;
        println!("{store}");
        if !smoke {
            write_section(&benchmarks, STORE_SECTION, &store)?;
        }
        let section = scale::run(&root, smoke)?;
        println!("{section}");
        if !smoke {
            write_section(&benchmarks, SCALE_SECTION, &section)?;
            eprintln!("wrote {}", benchmarks.display());
        }
        return Ok(());
    }
    let plan = if smoke {
        Plan {
            smoke,
            seconds: 2,
            levels: vec![64],
            rounds: 1,
            judged_rounds: 1,
            counted_requests: 100,
        }
    } else {
        Plan {
            smoke,
            seconds: 3,
            levels: vec![1, 64, 256],
            rounds: 3,
            judged_rounds: 9,
            counted_requests: 20_000,
        }
    };
    ensure_installed("valgrind", "valgrind")?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    if args.contains(&"--instructions") {
        println!("{}", runtime.block_on(instructions_only(&root, &plan))?);
        return Ok(());
    }
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
const STORE_SECTION: &str = "store (cargo xtask bench --scale, or --store alone)";
const SOAK_SECTION: &str = "log volume (cargo xtask bench --soak)";
const PAGE_SECTION: &str = "status page (cargo xtask bench --page)";

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

/// Starts one of the healthd servers, its log to `log`.
fn start_server(
    root: &Path,
    launch: Launch,
    dependencies: &Dependencies,
    server: Server,
    log: &Path,
) -> anyhow::Result<(Instance, Process)> {
    let port = free_port()?;
    let log = fs::File::create(log)?.into();
    let process = start_healthd_with(
        root,
        Profile::Release,
        launch,
        port,
        dependencies,
        log,
        variant(server),
    )?;
    Ok((Instance::of(port, &process), process))
}

/// How each healthd server is configured.
fn variant(server: Server) -> Variant<'static> {
    let details = match server {
        Server::DetailsAlways => Details::Always,
        _ => Details::Authorized,
    };
    Variant { details, access_log: server != Server::AccessLogOff, extra_checks: "" }
}

/// A server wrk can load: its port, and its pid for CPU time.
#[derive(Clone, Copy)]
struct Instance {
    port: u16,
    pid: u32,
}

impl Instance {
    fn of(port: u16, process: &Process) -> Instance {
        Instance { port, pid: process.pid() }
    }

    fn measure(
        self,
        plan: &Plan,
        target: &Target,
        connections: u32,
        expect: Expect,
    ) -> anyhow::Result<Measurement> {
        wrk(self.port, target, connections, plan.seconds, self.pid, expect)
    }
}

/// A probe path and the baseline that stands for it: bare actix-web
/// answering the same path with a body as large as the path's answer.
struct Pair {
    target: &'static Target,
    /// The size of the path's answer, and so of the baseline's body.
    bytes: usize,
    healthd: Instance,
    baseline: Instance,
}

impl Pair {
    /// What wrk asks the baseline: the target's path, with no token.
    fn baseline_target(&self) -> Target {
        Target { path: self.target.path, ..BASELINE }
    }
}

/// The healthd instances, and one baseline per path and answer size.
struct Servers {
    healthd: (Instance, Process),
    details_always: (Instance, Process),
    access_log_off: (Instance, Process),
    /// By path and body size.
    baselines: Vec<((&'static str, usize), Instance, Process)>,
}

impl Servers {
    fn instance(&self, server: Server) -> Instance {
        match server {
            Server::Healthd => self.healthd.0,
            Server::DetailsAlways => self.details_always.0,
            Server::AccessLogOff => self.access_log_off.0,
            Server::Baseline => unreachable!("a baseline is found by its path and body size"),
        }
    }

    /// Each target with its answer's size and a baseline of its path and
    /// that size, started when no target before it had both.
    fn pairs(&mut self, root: &Path) -> anyhow::Result<Vec<Pair>> {
        let mut pairs = Vec::new();
        for target in &TARGETS {
            let healthd = self.instance(target.server);
            let token = target.authorized.then_some(TOKEN);
            let (status, body) = fetch(healthd.port, target.path, token)?;
            let detailed = target.server == Server::DetailsAlways || target.authorized;
            if status != 200 || detailed != body.contains("db:responseTime") {
                bail!("{} is not the answer the bench expects: {status} {body}", target.label);
            }
            let key = (target.path, body.len());
            let baseline = match self.baselines.iter().find(|(known, _, _)| *known == key) {
                Some((_, instance, _)) => *instance,
                None => {
                    let port = free_port()?;
                    let (path, bytes) = key;
                    let launch = Launch::Native;
                    let process =
                        start_baseline(root, Profile::Release, launch, port, WORKERS, bytes, path)?;
                    let instance = Instance::of(port, &process);
                    self.baselines.push((key, instance, process));
                    instance
                }
            };
            let bytes = body.len();
            pairs.push(Pair { target, bytes, healthd, baseline });
        }
        Ok(pairs)
    }
}

async fn bench(root: &Path, plan: &Plan) -> anyhow::Result<String> {
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let dependencies = Dependencies::start(root, Profile::Release).await?;
    let postgres = &dependencies.postgres;
    let access_log = out_dir.join("access.log");
    let always_log = out_dir.join("access-always.log");
    let start =
        |server: Server, log: &Path| start_server(root, Launch::Native, &dependencies, server, log);
    let mut servers = Servers {
        healthd: start(Server::Healthd, &access_log)?,
        details_always: start(Server::DetailsAlways, &always_log)?,
        access_log_off: start(Server::AccessLogOff, &out_dir.join("log-off.log"))?,
        baselines: Vec::new(),
    };
    let pairs = servers.pairs(root)?;

    let started = Instant::now();
    let statements_before = postgres.executed_statements().await;
    let mut grid: Vec<(u32, &Pair, Rounds)> = Vec::new();
    for &connections in &plan.levels {
        let mut rounds: Vec<Vec<(Measurement, Measurement)>> = vec![Vec::new(); pairs.len()];
        let rounds_here =
            if connections == JUDGED_CONNECTIONS { plan.judged_rounds } else { plan.rounds };
        for _ in 0..rounds_here {
            for (index, pair) in pairs.iter().enumerate() {
                let baseline = pair.baseline_target();
                let baseline =
                    pair.baseline.measure(plan, &baseline, connections, Expect::Success)?;
                let measured =
                    pair.healthd.measure(plan, pair.target, connections, Expect::Success)?;
                rounds[index].push((measured, baseline));
            }
        }
        for (pair, pairs) in pairs.iter().zip(rounds) {
            grid.push((connections, pair, Rounds { pairs }));
        }
    }
    let statements_after = postgres.executed_statements().await;
    let load_minutes = started.elapsed().as_secs_f64() / 60.0;
    let probes: f64 = grid
        .iter()
        .flat_map(|(_, _, rounds)| &rounds.pairs)
        .map(|(m, _)| m.requests_per_second * plan.seconds as f64)
        .sum();

    let frozen = frozen_rounds(root, plan, servers.healthd.0).await?;

    let healthd_rss = peak_rss_kib(servers.healthd.0.pid)?;
    let baseline_rss = peak_rss_kib(pairs[0].baseline.pid)?;
    drop(servers);
    let instructions = count_instructions(root, plan, &dependencies, &pairs)?;
    let log_lines = count_access_lines(&access_log)? + count_access_lines(&always_log)?;
    remove_bench_output(&out_dir)?;

    let mut table = String::new();
    writeln!(table, "| connections | target | body bytes | requests/s | baseline requests/s | × baseline | p50 µs | p99 µs | baseline p99 µs | p99 × baseline | CPU µs/request | baseline CPU µs/request | CPU × baseline |")?;
    writeln!(table, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for (connections, pair, rounds) in &grid {
        writeln!(
            table,
            "| {connections} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.2} |",
            pair.target.label,
            pair.bytes,
            rounds.requests_per_second(),
            rounds.median_of(|(_, baseline)| baseline.requests_per_second),
            rounds.throughput_ratio(),
            rounds.median_of(|(m, _)| m.p50_us),
            rounds.median_of(|(m, _)| m.p99_us),
            rounds.median_of(|(_, baseline)| baseline.p99_us),
            rounds.p99_ratio(),
            rounds.median_of(|(m, _)| m.cpu_us_per_request),
            rounds.median_of(|(_, baseline)| baseline.cpu_us_per_request),
            rounds.median_of(|(m, baseline)| m.cpu_us_per_request / baseline.cpu_us_per_request),
        )?;
    }
    writeln!(
        table,
        "\nTargets at {JUDGED_CONNECTIONS} connections, the access log on: requests/s at least {JUDGED_THROUGHPUT:.2}x the baseline's, p99 at most {JUDGED_P99:.2}x:\n"
    )?;
    writeln!(table, "| target | × baseline requests/s | p99 × baseline | met | server CPU per request × baseline (not judged) |")?;
    writeln!(table, "|---|---:|---:|:---:|---:|")?;
    let judged = |(connections, pair, _): &&(u32, &Pair, Rounds)| {
        *connections == JUDGED_CONNECTIONS && pair.target.judged()
    };
    for (_, pair, rounds) in grid.iter().filter(judged) {
        let (throughput, p99) = (rounds.throughput_ratio(), rounds.p99_ratio());
        let met = throughput >= JUDGED_THROUGHPUT && p99 <= JUDGED_P99;
        writeln!(
            table,
            "| {} | {throughput:.2} | {p99:.2} | {} | {:.2} |",
            pair.target.label,
            if met { "yes" } else { "no" },
            rounds.median_of(|(m, baseline)| m.cpu_us_per_request / baseline.cpu_us_per_request),
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
    table.push_str(&instructions_table(plan, &instructions)?);
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
        "| statements per minute the check interval implies ({CHECK_INTERVAL_SECONDS} s, one `SELECT 1` a run, three healthd) | {:.1} |",
        3.0 * 60.0 / CHECK_INTERVAL_SECONDS as f64
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
    plan: &Plan,
    running: Instance,
) -> anyhow::Result<Vec<(&'static Target, Rounds)>> {
    let dependencies = Dependencies::start(root, Profile::Release).await?;
    let port = free_port()?;
    let log = fs::File::create(root.join("target/bench/access-frozen.log"))?;
    let healthd = start_healthd(
        root,
        Profile::Release,
        Launch::Native,
        port,
        &dependencies,
        Details::Authorized,
        log.into(),
    )?;
    dependencies.postgres.freeze();
    // A run that meets the frozen database takes its timeout; the next
    // run starts an interval later.
    wait_until("the db check timing out", Duration::from_secs(3 * CHECK_INTERVAL_SECONDS), || {
        fetch(port, "/health", Some(TOKEN))
            .is_ok_and(|(status, body)| status == 503 && body.contains("timed out"))
    })?;
    let frozen = Instance::of(port, &healthd);
    let targets = [ANONYMOUS, AUTHORIZED];
    let rounds = if plan.smoke { 1 } else { FROZEN_ROUNDS };
    let mut pairs: Vec<Vec<(Measurement, Measurement)>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (index, target) in targets.iter().enumerate() {
            let running = running.measure(plan, target, FROZEN_CONNECTIONS, Expect::Success)?;
            let frozen = frozen.measure(plan, target, FROZEN_CONNECTIONS, Expect::Unavailable)?;
            pairs[index].push((frozen, running));
        }
    }
    dependencies.postgres.thaw();
    Ok(targets.into_iter().zip(pairs.into_iter().map(|pairs| Rounds { pairs })).collect())
}

/// A target's instructions per request, its baseline's, and where the
/// difference goes.
struct Counted {
    label: &'static str,
    healthd: f64,
    baseline: f64,
    /// Per `PARTS`, what healthd spends in it (with what it calls).
    parts: Vec<Option<f64>>,
}

/// healthd's functions that the baseline has no counterpart of, each
/// counted with what it calls: what the profile table splits out.
const PARTS: [(&str, &str); 4] = [
    ("healthd::api::log::log_access", "access-log line"),
    ("healthd::api::authenticate", "bearer token"),
    ("healthd::api::screen", "request screening"),
    ("healthd::api::access::Access::client_address", "client address"),
];

/// Each target's instructions per request next to its baseline's, with
/// each server run under callgrind in turn.
fn count_instructions(
    root: &Path,
    plan: &Plan,
    dependencies: &Dependencies,
    pairs: &[Pair],
) -> anyhow::Result<Vec<Counted>> {
    let out_dir = root.join("target/bench");
    let mut baseline_counts: Vec<((&str, usize), f64)> = Vec::new();
    for pair in pairs {
        let (path, bytes) = (pair.target.path, pair.bytes);
        if baseline_counts.iter().any(|(key, _)| *key == (path, bytes)) {
            continue;
        }
        let port = free_port()?;
        let launch = Launch::Callgrind;
        let process = start_baseline(root, Profile::Release, launch, port, WORKERS, bytes, path)?;
        let counter = process.instrumented().context("not under callgrind")?;
        let count = counter.count_requests(port, path, None, plan.counted_requests, None)?;
        eprintln!("baseline of {path}, {bytes} bytes: {count:.0} instructions per request");
        baseline_counts.push(((path, bytes), count));
    }
    let mut counts = Vec::new();
    for server in [Server::Healthd, Server::DetailsAlways, Server::AccessLogOff] {
        let log = out_dir.join("access-callgrind.log");
        let (Instance { port, .. }, process) =
            start_server(root, Launch::Callgrind, dependencies, server, &log)?;
        let counter = process.instrumented().context("not under callgrind")?;
        for pair in pairs.iter().filter(|pair| pair.target.server == server) {
            let token = pair.target.authorized.then_some(TOKEN);
            let dump = out_dir.join("callgrind.profile");
            let count = counter
                .count_requests(port, pair.target.path, token, plan.counted_requests, Some(&dump))
                .with_context(|| format!("counting instructions for {}", pair.target.label))?;
            let functions: Vec<&str> = PARTS.iter().map(|(function, _)| *function).collect();
            let parts = callgrind::inclusive_per_request(&dump, plan.counted_requests, &functions)?;
            fs::remove_file(&dump)?;
            eprintln!("{}: {count:.0} instructions per request", pair.target.label);
            let baseline = baseline_counts
                .iter()
                .find(|(key, _)| *key == (pair.target.path, pair.bytes))
                .map(|(_, count)| *count)
                .context("no baseline count")?;
            counts.push(Counted { label: pair.target.label, healthd: count, baseline, parts });
        }
    }
    // In the order of the targets, whichever server answered them.
    counts.sort_by_key(|counted| TARGETS.iter().position(|t| t.label == counted.label));
    Ok(counts)
}

/// Instructions per request of each target next to its baseline's, and
/// where healthd's extra goes.
fn instructions_table(plan: &Plan, instructions: &[Counted]) -> anyhow::Result<String> {
    let mut table = String::new();
    writeln!(
        table,
        "\nInstructions per request, counted by callgrind over {} requests on one keep-alive connection after 500 to warm up (user space, every thread of the server, the log writer's included), each next to a baseline whose body has the same size:\n",
        plan.counted_requests
    )?;
    writeln!(table, "| target | instructions/request | baseline instructions/request | × baseline | more than the baseline | {} | the rest |", PARTS.map(|(_, label)| label).join(" | "))?;
    writeln!(table, "|---|---:|---:|---:|---:|{}---:|", "---:|".repeat(PARTS.len()))?;
    for counted in instructions {
        let extra = counted.healthd - counted.baseline;
        let named: f64 = counted.parts.iter().flatten().sum();
        let parts: Vec<String> = counted
            .parts
            .iter()
            .map(|part| part.map_or("inlined".into(), |count| format!("{count:.0}")))
            .collect();
        writeln!(
            table,
            "| {} | {:.0} | {:.0} | {:.2} | {extra:.0} | {} | {:.0} |",
            counted.label,
            counted.healthd,
            counted.baseline,
            counted.healthd / counted.baseline,
            parts.join(" | "),
            extra - named,
        )?;
    }
    writeln!(
        table,
        "\nThe parts are healthd's own functions, each counted with what it calls: `api::log::log_access` (formats the JSON line and hands it to the writer thread), `api::authenticate` (SHA-256 of the bearer token, compared with every configured digest in constant time, and the caller's name kept for the log), `api::screen` (allowlist, header limits, query string, no body) and `Access::client_address`. The rest is everything else healthd does that the baseline does not, found by difference: routing among healthd's 14 routes in a scope, the layer's own glue (start time, draining, request counters), loading the snapshot and the access rules, and the `Cache-Control` header. Valgrind hides the CPU's SHA extensions, so under callgrind the token's SHA-256 runs in software: natively it is a fraction of the figure shown.\n"
    )?;
    Ok(table)
}

/// `--instructions`: only the callgrind part, for comparing two builds
/// instruction for instruction (it does not move with the machine's load).
async fn instructions_only(root: &Path, plan: &Plan) -> anyhow::Result<String> {
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let dependencies = Dependencies::start(root, Profile::Release).await?;
    let start =
        |server: Server, log: &Path| start_server(root, Launch::Native, &dependencies, server, log);
    let mut servers = Servers {
        healthd: start(Server::Healthd, &out_dir.join("access.log"))?,
        details_always: start(Server::DetailsAlways, &out_dir.join("access-always.log"))?,
        access_log_off: start(Server::AccessLogOff, &out_dir.join("log-off.log"))?,
        baselines: Vec::new(),
    };
    // The answers' sizes, which the baselines match.
    let pairs = servers.pairs(root)?;
    drop(servers);
    let instructions = count_instructions(root, plan, &dependencies, &pairs)?;
    remove_bench_output(&out_dir)?;
    instructions_table(plan, &instructions)
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
        "- healthd (release) and the baselines (`examples/baseline.rs`, bare actix-web returning a fixed JSON body, one server per path and answer size: each target's baseline answers the target's path with a body as large as the target's answer) each run {WORKERS} workers; wrk runs on the same 2 cores"
    )?;
    writeln!(
        document,
        "- healthd checks a throwaway PostgreSQL, a local HTTP server (http and tcp checks) and the disk every {CHECK_INTERVAL_SECONDS} s; a bearer token is configured (`details = \"authorized\"`; a second healthd alike but for `details = \"always\"`, and a third with the access log filtered out, to show what it costs); the access log is on, JSON, written to a file"
    )?;
    writeln!(
        document,
        "- {} rounds of {} s at {JUDGED_CONNECTIONS} connections, {} at the others; within a round each target runs right after its baseline; each figure is the median over the rounds, and each ratio the median of the ratios taken within a round\n",
        plan.judged_rounds, plan.seconds, plan.rounds
    )?;
    document.push_str(table);
    Ok(document)
}
