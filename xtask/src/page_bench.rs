//! `cargo xtask bench --page`: the status page over 10,000 checks in
//! headless Chromium. The release build runs the estate (crate::estate)
//! with a SQLite store; once the store holds today's roll-ups, the
//! browser (contract/page-bench.mjs) loads `/status` cold a few times and
//! follows refreshes: first paint, the first page of checks drawn, and
//! the bytes each refresh transfers. Under `--smoke`, 1,000 checks and
//! one load, to prove it works.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::estate::{Estate, Shape};
use crate::load::chrono_free_date;
use crate::scale::thousands;
use crate::services::{fetch, wait_until, Profile, TOKEN};

const LOADS: usize = 5;
const REFRESHES: usize = 6;
/// The page's own page size (status.html's PAGE_SIZE).
const PAGE_SIZE: usize = 50;
/// What the issue asks of a refresh, and of the first paint.
const REFRESH_TARGET_BYTES: f64 = 100_000.0;
const FIRST_PAINT_TARGET_MS: f64 = 1_000.0;

pub fn run(root: &Path, smoke: bool) -> anyhow::Result<String> {
    let shape = if smoke {
        Shape { checks: 1_000, failing: 10, warning: 5 }
    } else {
        Shape { checks: 10_000, failing: 100, warning: 50 }
    };
    let loads = if smoke { 1 } else { LOADS };
    let refreshes = if smoke { 2 } else { REFRESHES };
    ensure_browser(root)?;
    let estate = Estate::start(root, Profile::Release, &shape)?;
    // The store adds its roll-ups every minute: wait for today's, so the
    // answers hold what a page of a running estate holds.
    wait_until("the store's first roll-ups on the page", Duration::from_secs(180), || {
        fetch(estate.port, "/health/page?limit=1", Some(TOKEN)).is_ok_and(|(_, body)| {
            let page: Value = serde_json::from_str(&body).unwrap_or_default();
            page["checks"][0]["days"]
                .as_array()
                .and_then(|days| days.last())
                .is_some_and(|d| !d.is_null())
        })
    })?;
    let output = Command::new("node")
        .arg(root.join("contract/page-bench.mjs"))
        .env("PAGE_BENCH_URL", format!("http://127.0.0.1:{}", estate.port))
        .env("HEALTHD_TOKEN", TOKEN)
        .env("PAGE_BENCH_LOADS", loads.to_string())
        .env("PAGE_BENCH_REFRESHES", refreshes.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running contract/page-bench.mjs")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("contract/page-bench.mjs failed:\n{stdout}");
    }
    let results: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("page-bench.mjs printed no result:\n{stdout}"))?;
    section(smoke, &shape, &results)
}

/// playwright-core and Chromium, as the contract stage installs them.
fn ensure_browser(root: &Path) -> anyhow::Result<()> {
    crate::load::ensure_installed("chromium", "chromium")?;
    let contract = root.join("contract");
    if !contract.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&contract)
            .status()
            .context("running npm ci in contract/ (needs nodejs and npm)")?;
        if !status.success() {
            bail!("npm ci in contract/ failed");
        }
    }
    Ok(())
}

fn numbers(results: &Value, list: &str, field: &str) -> Vec<f64> {
    results[list]
        .as_array()
        .map(|items| items.iter().filter_map(|item| item[field].as_f64()).collect())
        .unwrap_or_default()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn most(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn section(smoke: bool, shape: &Shape, results: &Value) -> anyhow::Result<String> {
    let paint = numbers(results, "loads", "firstPaintMs");
    let drawn = numbers(results, "loads", "checksDrawnMs");
    let answer_ms = numbers(results, "loads", "dataMs");
    let first_bytes = numbers(results, "loads", "dataBytes");
    let refreshes = results["refreshes"].as_array().cloned().unwrap_or_default();
    let paths: Vec<&str> = refreshes.iter().filter_map(|r| r["path"].as_str()).collect();
    let of_status = |code: u64| -> Vec<f64> {
        refreshes
            .iter()
            .filter(|r| r["status"].as_u64() == Some(code))
            .filter_map(|r| r["bytes"].as_f64())
            .collect()
    };
    let (ok, not_modified) = (of_status(200), of_status(304));
    let worst_refresh = most(&first_bytes).max(most(&ok)).max(most(&not_modified));
    // A day without runs is `null` (4 bytes); with 90 days of history each
    // is a share of at most 6 characters ("0.9987").
    let history_bound = worst_refresh + (2 * 89 * PAGE_SIZE) as f64;
    let mut out = String::new();
    writeln!(out, "## Status page at {} checks\n", thousands(shape.checks))?;
    writeln!(
        out,
        "Measured by `cargo xtask bench --page{}` on {}: healthd (release) with {} checks every 10 s ({} failing, {} warning, the rest tcp checks against a local listener), a SQLite store holding today's roll-ups, the token's details; `/status` in Debian's headless Chromium (playwright-core, 1280×900), {} cold load(s) (a new profile each, the token already in the tab's session), then {} refreshes of the last one. Times are from navigation start.\n",
        if smoke { " --smoke" } else { "" },
        chrono_free_date(),
        thousands(shape.checks),
        shape.failing,
        shape.warning,
        paint.len(),
        refreshes.len(),
    )?;
    writeln!(out, "| | median | worst | target |")?;
    writeln!(out, "|---|---:|---:|---|")?;
    writeln!(
        out,
        "| first paint | {:.0} ms | {:.0} ms | under 1 s |",
        median(paint.clone()),
        most(&paint)
    )?;
    writeln!(
        out,
        "| first page of {PAGE_SIZE} checks drawn | {:.0} ms | {:.0} ms | |",
        median(drawn.clone()),
        most(&drawn)
    )?;
    writeln!(
        out,
        "| `health/page` answered (first load) | {:.0} ms | {:.0} ms | |",
        median(answer_ms.clone()),
        most(&answer_ms)
    )?;
    writeln!(
        out,
        "| bytes of the first load's `health/page` (a 200) | {} | {} | |",
        thousands(median(first_bytes.clone()) as usize),
        thousands(most(&first_bytes) as usize)
    )?;
    writeln!(
        out,
        "| bytes of a refresh: {} answered 200, {} answered 304 | {} | {} | under 100 KB |",
        ok.len(),
        not_modified.len(),
        thousands(median(ok.iter().chain(&not_modified).copied().collect()) as usize),
        thousands(worst_refresh as usize),
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Requests per refresh: {} for {} refreshes, all to `{}`. A 304 (nothing shown changed) is its headers only; a 200 is one page of {PAGE_SIZE} checks, whatever the estate's size. With 90 days of history each `null` day becomes a share of at most 6 characters: at most {} bytes more per 200 ({} in all).",
        paths.len(),
        refreshes.len(),
        paths.first().copied().unwrap_or("-"),
        thousands(2 * 89 * PAGE_SIZE),
        thousands(history_bound as usize),
    )?;
    let paint_met = most(&paint) < FIRST_PAINT_TARGET_MS;
    let bytes_met = history_bound < REFRESH_TARGET_BYTES;
    writeln!(
        out,
        "\nTargets: first paint under 1 s {}; a refresh under 100 KB {}.\n",
        if paint_met { "met" } else { "NOT met" },
        if bytes_met { "met (with 90 days of history too)" } else { "NOT met" },
    )?;
    Ok(out)
}
