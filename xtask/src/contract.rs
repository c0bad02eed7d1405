//! `cargo xtask contract`: the contract checked by the tools our users run
//! (spec lint, schemathesis, generated Python and TypeScript clients,
//! Swagger UI and the status page in headless Chromium), against a live
//! healthd with real checks and a token, and a second one with 1,000
//! checks and a store for the status page. The stages themselves are
//! `contract/run.sh`.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::estate::{Estate, Shape};
use crate::project_root;
use crate::services::{
    free_port, start_healthd_with, Dependencies, Details, Launch, Profile, Variant, TOKEN,
};

/// The check the status page must show as failing: non-critical, so
/// `/health` still answers 200 (warn) for the other stages.
const FAILING_CHECK: &str = "broken";
/// The estate the status page is driven over (contract/estate.mjs).
const ESTATE_CHECKS: usize = 1_000;
const ESTATE_FAILING: usize = 20;
const ESTATE_WARNING: usize = 10;

pub fn run() -> anyhow::Result<()> {
    let root = project_root();
    let started = Instant::now();
    Profile::Debug.build(&root)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let dependencies = runtime.block_on(Dependencies::start(&root, Profile::Debug))?;
    let port = free_port()?;
    std::fs::create_dir_all(root.join("target/xtask"))?;
    let log = std::fs::File::create(root.join("target/xtask/contract-healthd.log"))?;
    // A port nothing listens on: connection refused on every run.
    let refused = free_port()?;
    // A group named like the check the fuzz stage's dictionary holds
    // (HEALTHD_CHECK), so that GET /health/groups/{name} reaches 200 too,
    // not only 404.
    let failing = format!(
        "\n[[checks]]\nname = \"{FAILING_CHECK}\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{refused}\"\ncritical = false\n\n[[groups]]\nname = \"db\"\nmembers = [\"db\", \"{FAILING_CHECK}\"]\n"
    );
    let _healthd = start_healthd_with(
        &root,
        Profile::Debug,
        Launch::Native,
        port,
        &dependencies,
        log.into(),
        Variant { details: Details::Authorized, access_log: true, extra_checks: &failing },
    )?;
    // The status page over a real estate: one request per refresh, failing first.
    let estate = Estate::start(
        &root,
        Profile::Debug,
        &Shape { checks: ESTATE_CHECKS, failing: ESTATE_FAILING, warning: ESTATE_WARNING },
    )?;
    let status = Command::new("bash")
        .arg(root.join("contract/run.sh"))
        .current_dir(&root)
        .env("HEALTHD_URL", format!("http://127.0.0.1:{port}"))
        .env("HEALTHD_TOKEN", TOKEN)
        .env("HEALTHD_CHECK", "db")
        .env("STATUS_FAILING_CHECK", FAILING_CHECK)
        .env("STATUS_ESTATE_URL", format!("http://127.0.0.1:{}", estate.port))
        .env("STATUS_ESTATE_FAILING", estate.failing.join(","))
        .env("STATUS_ESTATE_WARNING", estate.warning.join(","))
        .stdin(Stdio::null())
        .status()
        .context("running contract/run.sh")?;
    eprintln!("contract stage took {:.0} s", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("the contract stage failed; healthd's log is target/xtask/contract-healthd.log");
    }
    Ok(())
}
