//! Load and what it costs: wrk runs against a target, the CPU time and
//! peak memory of a process from /proc, and the small command helpers the
//! bench and its scale part share.

use std::fs;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::services::TOKEN;

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
    /// healthd with `details = "authorized"` and a token.
    Healthd,
    /// healthd configured alike but for `details = "always"`.
    DetailsAlways,
    /// healthd configured alike but with the access log filtered out: what
    /// the log costs, not judged.
    AccessLogOff,
    /// Bare actix-web answering a fixed body (`examples/baseline.rs`).
    Baseline,
}

pub struct Target {
    pub label: &'static str,
    pub server: Server,
    pub path: &'static str,
    pub authorized: bool,
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

/// Today's date from `date`, to keep chrono out of xtask.
pub fn chrono_free_date() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}
