//! `cargo xtask gateway`: healthd behind the tools its users put in front
//! of it, run from the files in `deploy/` as a user would copy them:
//! nginx as the gateway (healthd under `/ops/`, Swagger UI in headless
//! Chromium), HAProxy balancing two instances through a SIGTERM drain,
//! Prometheus scraping with a bearer token (and promtool on the exposition
//! and the alert rules), healthd over HTTPS with client certificates
//! (Prometheus scraping with its own, nginx proxying with its own), and the
//! Kubernetes manifest's config, probes and grace period. Every server runs on free loopback ports from
//! `target/gateway/`, every wait has a deadline, and everything started is
//! stopped, also when a scenario fails.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use crate::project_root;
use crate::services::{free_port, start_baseline, wait_until, Launch, Profile};
use support::{http, render, version, Answer, Line, Server};

/// The token every healthd of the stage accepts (as `[[access.tokens]]`
/// named "ops", from the environment).
const TOKEN: &str = "gateway-token-0123456789";
/// What a probe, a startup or an exit may take on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// Debian's packages, by the binary each provides.
const TOOLS: [(&str, &str); 4] = [
    ("/usr/sbin/nginx", "nginx-light"),
    ("/usr/sbin/haproxy", "haproxy"),
    ("/usr/bin/prometheus", "prometheus"),
    ("/usr/bin/promtool", "prometheus"),
];

/// One scenario: its one-line result, or why it failed.
type Scenario = fn(&Stage) -> anyhow::Result<String>;

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let root = project_root();
    install_missing_tools()?;
    println!("gateway: {}", version("nginx", &["-v"])?);
    println!("gateway: {}", version("haproxy", &["-v"])?);
    println!("gateway: {}", version("prometheus", &["--version"])?);
    println!("gateway: {}", version("promtool", &["--version"])?);
    Profile::Debug.build(&root)?;
    let scratch = root.join("target/gateway");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let stage = Stage { root, scratch };

    let scenarios: [(&str, Scenario); 5] = [
        ("nginx", nginx),
        ("haproxy", haproxy),
        ("prometheus", prometheus),
        ("mtls", mtls),
        ("kubernetes", kubernetes),
    ];
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
        let started = Instant::now();
        let result = scenario(&stage);
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(summary) => println!("{name:<11} PASS {seconds:5.1}s  {summary}"),
            Err(error) => {
                println!("{name:<11} FAIL {seconds:5.1}s  {error:#}");
                failed.push(name);
            }
        }
    }
    println!(
        "gateway: {:.0} s, {} passed, {} failed; logs in target/gateway/",
        started.elapsed().as_secs_f64(),
        scenarios.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("the gateway stage failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Installs the Debian packages whose binaries are missing, when root;
/// no service starts (policy-rc.d answers 101 during the install).
fn install_missing_tools() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(binary, _)| !Path::new(binary).exists())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing {}: install Debian's packages (sudo apt-get install {}) or run as root",
            TOOLS
                .iter()
                .filter(|(binary, _)| !Path::new(binary).exists())
                .map(|(binary, _)| *binary)
                .collect::<Vec<_>>()
                .join(", "),
            missing.join(" ")
        );
    }
    println!("gateway: installing {} from Debian's packages", missing.join(" "));
    let policy = Path::new("/usr/sbin/policy-rc.d");
    // Whatever was there (a container's own, often) comes back afterwards.
    let previous = std::fs::read(policy).ok().zip(std::fs::metadata(policy).ok());
    std::fs::write(
        policy,
        "#!/bin/sh\n# cargo xtask gateway: start no service during its install\nexit 101\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .context("running apt-get")?;
        ensure!(status.success(), "apt-get {} failed", args.join(" "));
        Ok(())
    };
    let installed = apt(&["update", "-q"]).and_then(|()| {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        // Another apt-get (a second stage, an agent) may hold the lock a while.
        args.extend(["-o", "DPkg::Lock::Timeout=300"]);
        args.extend(&missing);
        apt(&args)
    });
    match previous {
        Some((bytes, metadata)) => {
            std::fs::write(policy, bytes)?;
            std::fs::set_permissions(policy, metadata.permissions())?;
        }
        None => std::fs::remove_file(policy)?,
    }
    installed?;
    for (binary, package) in TOOLS {
        ensure!(Path::new(binary).exists(), "{package} is installed but {binary} is not there");
    }
    Ok(())
}

struct Stage {
    root: PathBuf,
    scratch: PathBuf,
}

impl Stage {
    /// A fresh directory for one scenario's files and logs.
    fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.scratch.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Starts healthd with `config` (JSON logs, the token in its
    /// environment) and waits until its startup probe answers 200.
    fn healthd(
        &self,
        name: &str,
        port: u16,
        config: &str,
        dir: &Path,
        env: &[(&str, String)],
    ) -> anyhow::Result<Server> {
        let server = self.spawn_healthd(name, config, dir, env)?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until(&format!("{name}'s startup probe answering 200"), DEADLINE, || {
            http(address, None, "GET", "/health/startup", &[]).is_ok_and(|a| a.status == 200)
        })?;
        Ok(server)
    }

    /// Starts healthd with `config` (JSON logs, the token in its environment).
    fn spawn_healthd(
        &self,
        name: &str,
        config: &str,
        dir: &Path,
        env: &[(&str, String)],
    ) -> anyhow::Result<Server> {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config)?;
        let mut command = Command::new(Profile::Debug.binary(&self.root, "healthd"));
        command.arg("--config").arg(&config_path).args(["--log-format", "json"]);
        command.env("HEALTHD_TOKEN", TOKEN).env_remove("HEALTHD_LISTEN");
        for (key, value) in env {
            command.env(key, value);
        }
        Server::spawn(name, command, &dir.join(format!("{name}.log")))
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Prints an excerpt for the log, indented under its scenario.
fn excerpt(label: &str, text: &str) {
    println!("    {label}: {text}");
}

// --- nginx --------------------------------------------------------------------

/// Clients of the nginx scenario, each on its own loopback address (nginx
/// itself reaches healthd from 127.0.0.1).
const OPS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

fn behind_nginx_config(port: u16) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
service_id = "behind-nginx"
drain_delay = "0s"

[access]
details = "authorized"
trusted_proxies = ["127.0.0.1/32"]         # nginx
allow = ["127.0.0.1/32", "{OPS}/32", "{OTHER}/32"]
details_allow = ["{OPS}/32"]
[[access.tokens]]
name = "ops"
env = "HEALTHD_TOKEN"
scopes = ["read", "ping"]

[storage]
path = "{store}"

[[checks]]
name = "disk"
kind = "disk"
path = "/"
warn_below = "0%"
fail_below = "0%"

[[checks]]
name = "nightly"
kind = "heartbeat"
period = "1h"
grace = "1h"

[[groups]]
name = "disk"
members = ["disk"]
"#,
        store = std::env::temp_dir().join(format!("healthd-gateway-{port}.db")).display()
    )
}

fn nginx(stage: &Stage) -> anyhow::Result<String> {
    let dir = stage.dir("nginx")?;
    let app_port = free_port()?;
    let _app =
        start_baseline(&stage.root, Profile::Debug, Launch::Native, app_port, 1, 64, "/health")?;
    let healthd_port = free_port()?;
    let healthd =
        stage.healthd("healthd", healthd_port, &behind_nginx_config(healthd_port), &dir, &[])?;
    let port = free_port()?;
    let site = render(
        &stage.root,
        "deploy/nginx/healthd.conf",
        &[
            ("server 127.0.0.1:8080;", format!("server 127.0.0.1:{healthd_port};")),
            ("server 127.0.0.1:3000;", format!("server 127.0.0.1:{app_port};")),
            ("listen 80;", format!("listen 127.0.0.1:{port};")),
        ],
    )?;
    let _nginx = start_nginx(&dir, &site)?;
    let gateway = local(port);
    wait_until("nginx answering", DEADLINE, || {
        http(gateway, None, "GET", "/ops/health/live", &[]).is_ok_and(|a| a.status == 200)
    })?;
    let auth = bearer();
    let with_token = [("Authorization", auth.as_str())];

    // Every operation of the contract, under /ops/, with the token passed through.
    let contract: Value =
        serde_norway::from_str(&std::fs::read_to_string(stage.root.join("openapi.yaml"))?)?;
    let mut operations = 0;
    for (path, item) in contract["paths"].as_object().context("the contract's paths")? {
        for method in ["get", "head"] {
            if item.get(method).is_none() {
                continue;
            }
            // Pings go to the heartbeat; every other {name} is the disk check (or its group).
            let name = if path.contains("/ping") { "nightly" } else { "disk" };
            let target =
                format!("/ops{}", path.replace("{name}", name).replace("{exitStatus}", "0"));
            let method = method.to_uppercase();
            let answer = http(gateway, Some(OPS), &method, &target, &with_token)?;
            ensure!(answer.status == 200, "{method} {target} through nginx: {}", answer.status);
            operations += 1;
        }
    }

    // The contract served under the prefix points there, and so does Swagger UI.
    let json = http(gateway, Some(OPS), "GET", "/ops/openapi.json", &[])?;
    let json: Value = serde_json::from_str(&json.body)?;
    ensure!(json["servers"][0]["url"] == "/ops", "openapi.json's server: {}", json["servers"]);
    let yaml = http(gateway, Some(OPS), "GET", "/ops/openapi.yaml", &[])?;
    let yaml: Value = serde_norway::from_str(&yaml.body)?;
    ensure!(yaml["servers"][0]["url"] == "/ops", "openapi.yaml's server: {}", yaml["servers"]);
    let script = http(gateway, Some(OPS), "GET", "/ops/swagger-ui/swagger-initializer.js", &[])?;
    ensure!(
        script.body.contains("\"/ops/openapi.yaml\""),
        "Swagger UI's contract URL: {}",
        script.body
    );
    let redirect = http(gateway, Some(OPS), "GET", "/ops/swagger-ui", &[])?;
    ensure!(
        redirect.status == 301 && redirect.header("location") == Some("/ops/swagger-ui/"),
        "/ops/swagger-ui: {} to {:?}",
        redirect.status,
        redirect.header("location")
    );
    // A client's own X-Forwarded-Prefix: nginx replaces it; sent straight to
    // healthd (an untrusted peer) it changes nothing.
    let spoofed = [("X-Forwarded-Prefix", "/elsewhere")];
    let through = http(gateway, Some(OPS), "GET", "/ops/openapi.json", &spoofed)?;
    ensure!(through.body.contains("\"url\": \"/ops\""), "a client's prefix through nginx");
    let direct = http(local(healthd_port), Some(OPS), "GET", "/openapi.json", &spoofed)?;
    ensure!(direct.body.contains("\"url\": \"/\""), "a client's prefix straight to healthd");

    // allow and details_allow decide on the client behind nginx.
    let details = |from, headers: &[(&str, &str)]| -> anyhow::Result<Answer> {
        http(gateway, Some(from), "GET", "/ops/health", headers)
    };
    let ops = details(OPS, &with_token)?;
    ensure!(ops.status == 200 && ops.body.contains("\"checks\""), "ops client: {}", ops.body);
    let other = details(OTHER, &with_token)?;
    ensure!(
        other.status == 200 && !other.body.contains("\"checks\""),
        "other client: {}",
        other.body
    );
    let metrics = http(gateway, Some(OTHER), "GET", "/ops/metrics", &with_token)?;
    ensure!(metrics.status == 403, "other client's /metrics: {}", metrics.status);
    let outsider = details(OUTSIDER, &[])?;
    ensure!(outsider.status == 403, "outsider: {}", outsider.status);
    // A client that claims another address: nginx appends the real one.
    let spoof = format!("{OPS}");
    let claimed = details(OUTSIDER, &[("X-Forwarded-For", spoof.as_str())])?;
    ensure!(claimed.status == 403, "outsider claiming {OPS}: {}", claimed.status);
    let claimed = http(
        gateway,
        Some(OTHER),
        "GET",
        "/ops/metrics",
        &[("X-Forwarded-For", spoof.as_str()), with_token[0]],
    )?;
    ensure!(claimed.status == 403, "other client claiming {OPS}: {}", claimed.status);
    let no_token = http(gateway, Some(OPS), "GET", "/ops/metrics", &[])?;
    ensure!(no_token.status == 401, "/metrics without the token: {}", no_token.status);

    // The gateway routes the rest to the application.
    let app = http(gateway, Some(OPS), "GET", "/health", &[])?;
    ensure!(app.status == 200 && app.body.contains("padding"), "/health at the root: {}", app.body);

    // The access logs: healthd's shows the client and nginx as the peer.
    let line = healthd.wait_for_line("for the ops client's /health", DEADLINE, |line| {
        line.contains("\"path\":\"/health\"") && line.contains(&format!("\"client\":\"{OPS}\""))
    })?;
    ensure!(line.text.contains("\"peer\":\"127.0.0.1\""), "{}", line.text);
    ensure!(line.text.contains("\"principal\":\"ops\""), "{}", line.text);
    excerpt("healthd access log", &line.text);
    let nginx_log = std::fs::read_to_string(dir.join("access.log"))?;
    if let Some(line) = nginx_log.lines().find(|line| line.contains("GET /ops/health ")) {
        excerpt("nginx access log", line);
    }

    // Swagger UI under /ops/ in headless Chromium: contract/run.sh's browser stage.
    let status = Command::new("bash")
        .arg(stage.root.join("contract/run.sh"))
        .arg("browser")
        .current_dir(&stage.root)
        .env("HEALTHD_URL", format!("http://127.0.0.1:{port}/ops"))
        .env("HEALTHD_TOKEN", TOKEN)
        .env("HEALTHD_CHECK", "disk")
        .env("CONTRACT_BROWSER_PAGES", "swagger")
        .env("CONTRACT_OUT", dir.join("contract"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("browser.log"))?)
        .stderr(Stdio::inherit())
        .status()?;
    let browser = std::fs::read_to_string(dir.join("browser.log"))?;
    let summary = browser.lines().find(|line| line.starts_with("browser ")).unwrap_or("").trim();
    ensure!(status.success(), "Swagger UI under /ops/: {summary}");
    let swagger = summary.split_once("PASS").map_or(summary, |(_, rest)| rest.trim());

    Ok(format!(
        "{operations} operations 200 under /ops/ with the token; contract and Swagger UI at /ops; \
         allow/details_allow on the client behind nginx, X-Forwarded-For and X-Forwarded-Prefix \
         not spoofable; other paths to the app; Chromium: {swagger}"
    ))
}

/// nginx with `site` (a deploy file, rendered) included as conf.d/ would
/// include it, after `nginx -t` passes.
fn start_nginx(dir: &Path, site: &str) -> anyhow::Result<Server> {
    std::fs::write(dir.join("healthd.conf"), site)?;
    // The main file Debian's package would provide, with every path in the
    // scratch directory; it includes the deploy file as conf.d/ would. One
    // process, no master: were the stage killed, no worker outlives it.
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr notice;\n\
             events {{ worker_connections 256; }}\nhttp {{\n    access_log {d}/access.log combined;\n\
             \x20   client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n\
             \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n    uwsgi_temp_path {d}/tmp/uwsgi;\n\
             \x20   scgi_temp_path {d}/tmp/scgi;\n    include {d}/healthd.conf;\n}}\n"
        ),
    )?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    let nginx_command = || {
        let mut command = Command::new("nginx");
        command.arg("-p").arg(dir).arg("-c").arg(dir.join("nginx.conf")).args(["-e", "stderr"]);
        command
    };
    let test = nginx_command().arg("-t").output()?;
    ensure!(test.status.success(), "nginx -t: {}", String::from_utf8_lossy(&test.stderr));
    Server::spawn("nginx", nginx_command(), &dir.join("nginx.log"))
}

// --- HAProxy ------------------------------------------------------------------

fn balanced_config(name: &str, port: u16) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
service_id = "{name}"
drain_delay = "5s"

[[checks]]
name = "disk"
kind = "disk"
path = "/"
warn_below = "0%"
fail_below = "0%"
"#
    )
}

/// What the client loop saw: when, from which instance, or the error.
struct Outcome {
    at: Instant,
    served_by: Result<String, String>,
}

fn haproxy(stage: &Stage) -> anyhow::Result<String> {
    let dir = stage.dir("haproxy")?;
    let (port_1, port_2, port) = (free_port()?, free_port()?, free_port()?);
    let mut first =
        stage.healthd("healthd-1", port_1, &balanced_config("healthd-1", port_1), &dir, &[])?;
    let _second =
        stage.healthd("healthd-2", port_2, &balanced_config("healthd-2", port_2), &dir, &[])?;
    let config = render(
        &stage.root,
        "deploy/haproxy/haproxy.cfg",
        &[
            ("bind :80", format!("bind 127.0.0.1:{port}")),
            ("127.0.0.1:8081", format!("127.0.0.1:{port_1}")),
            ("127.0.0.1:8082", format!("127.0.0.1:{port_2}")),
        ],
    )?;
    let config_path = dir.join("haproxy.cfg");
    std::fs::write(&config_path, config)?;
    let check = Command::new("haproxy").arg("-c").arg("-f").arg(&config_path).output()?;
    ensure!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
    let mut command = Command::new("haproxy");
    command.arg("-db").arg("-f").arg(&config_path);
    let haproxy = Server::spawn("haproxy", command, &dir.join("haproxy.log"))?;
    let balancer = local(port);

    // Both instances in rotation before the drain starts.
    let mut seen = BTreeMap::new();
    wait_until("HAProxy sending requests to both instances", DEADLINE, || {
        if let Ok(answer) = http(balancer, None, "GET", "/health/live", &[]) {
            if let Some(name) = service_id(&answer) {
                *seen.entry(name).or_insert(0) += 1;
            }
        }
        seen.len() == 2
    })?;

    // The client loop: two clients, one request after the other each.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, outcomes) = (Arc::clone(&stop), Arc::clone(&outcomes));
            std::thread::spawn(move || {
                let started = Instant::now();
                // Bounded even if the stage forgets to stop it.
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                    let served_by = match http(balancer, None, "GET", "/health/live", &[]) {
                        Ok(answer) if answer.status == 200 => service_id(&answer)
                            .ok_or_else(|| format!("no serviceId: {}", answer.body)),
                        Ok(answer) => Err(format!("HTTP {}", answer.status)),
                        Err(error) => Err(format!("{error:#}")),
                    };
                    outcomes
                        .lock()
                        .expect("outcomes")
                        .push(Outcome { at: Instant::now(), served_by });
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let sigterm = Instant::now();
    first.signal(libc::SIGTERM);
    let exit = first.wait_exit(DEADLINE);
    let exited = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    let exit = exit?;

    let outcomes = outcomes.lock().expect("outcomes");
    let failures: Vec<&String> =
        outcomes.iter().filter_map(|outcome| outcome.served_by.as_ref().err()).collect();
    let close = first
        .lines()
        .into_iter()
        .find(|line| line.text.contains("closing the listener"))
        .context("healthd-1 never logged closing its listener")?;
    let down = haproxy.wait_for_line("marking healthd-1 down", Duration::from_secs(1), |line| {
        line.contains("healthd/healthd-1 is DOWN")
    })?;
    let by_first = |from: Instant, to: Instant| {
        outcomes
            .iter()
            .filter(|o| o.at >= from && o.at < to)
            .filter(|o| o.served_by.as_deref() == Ok("healthd-1"))
            .count()
    };
    let during_drain = by_first(sigterm, down.at);
    let after_down = by_first(down.at, Instant::now());
    // A request's log line comes after its answer: wait for the last ones
    // (with a deadline) rather than count what has been read so far.
    let is_probe_line = |line: &Line| line.text.contains("\"GET /health/live");
    let log_deadline = Instant::now() + Duration::from_secs(10);
    let haproxy_lines = loop {
        let lines = haproxy.lines();
        let logged = lines.iter().filter(|line| is_probe_line(line)).count();
        if logged >= outcomes.len() || Instant::now() >= log_deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The log lines (stdout), not their copies among HAProxy's own warnings (stderr).
    for line in haproxy_lines.iter().filter(|line| {
        line.text.contains("healthd-1")
            && !line.text.starts_with('[')
            && !line.text.contains("\"GET /health/live")
    }) {
        excerpt("haproxy", &line.text);
    }
    // HAProxy's own view: every request it logged got a 200 with no retry.
    let requests: Vec<&str> = haproxy_lines
        .iter()
        .map(|line| line.text.as_str())
        .filter(|text| text.contains("\"GET /health/live"))
        .collect();
    let troubled: Vec<&&str> =
        requests.iter().filter(|text| !haproxy_request_was_clean(text)).collect();

    ensure!(failures.is_empty(), "{} failed requests, first: {}", failures.len(), failures[0]);
    ensure!(exit.success(), "healthd-1 exited with {exit}");
    ensure!(
        down.at < close.at,
        "HAProxy marked healthd-1 down {:.1} s after SIGTERM, after its listener closed ({:.1} s)",
        (down.at - sigterm).as_secs_f64(),
        (close.at - sigterm).as_secs_f64()
    );
    ensure!(
        troubled.is_empty(),
        "HAProxy logged {} troubled requests: {}",
        troubled.len(),
        troubled[0]
    );
    // HAProxy writes its log to stdout without blocking and drops lines when
    // the pipe is full, which a 2-core machine under load sees: the client
    // loop's own count above is the proof of no failure; the log must hold
    // most of the requests, each of them clean.
    ensure!(
        requests.len() * 100 >= outcomes.len() * 95,
        "HAProxy logged {} of {} requests",
        requests.len(),
        outcomes.len()
    );
    Ok(format!(
        "{} requests through HAProxy, 0 failed (HAProxy: all 200, no retry); SIGTERM to healthd-1: \
         down in HAProxy after {:.1} s, listener closed after {:.1} s, exit 0 after {:.1} s; \
         healthd-1 answered {during_drain} requests while draining before that, {after_down} after",
        outcomes.len(),
        (down.at - sigterm).as_secs_f64(),
        (close.at - sigterm).as_secs_f64(),
        (exited - sigterm).as_secs_f64(),
    ))
}

fn service_id(answer: &Answer) -> Option<String> {
    let body: Value = serde_json::from_str(&answer.body).ok()?;
    body["serviceId"].as_str().map(str::to_string)
}

/// An `option httplog` line: `... 200 bytes - - ---- ac/fc/bc/sc/rc sq/bq "GET ..."`.
/// Clean is status 200, termination state `----` and 0 retries.
fn haproxy_request_was_clean(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let Some(state) = fields.iter().position(|field| *field == "----") else { return false };
    let status = fields.get(state.saturating_sub(4)).copied();
    let retries = fields.get(state + 1).and_then(|counts| counts.rsplit('/').next());
    status == Some("200") && retries == Some("0")
}

// --- Prometheus ---------------------------------------------------------------

fn scraped_config(port: u16, closed: u16) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
service_id = "scraped"
drain_delay = "0s"

[access]
details = "authorized"
details_allow = ["127.0.0.0/8"]
[[access.tokens]]
name = "prometheus"
env = "HEALTHD_TOKEN"

[defaults]
interval = "2s"
timeout = "500ms"
retries = 0

[[checks]]
name = "disk"
kind = "disk"
path = "/"
warn_below = "0%"
fail_below = "0%"

[[checks]]
name = "self"
kind = "tcp"
address = "127.0.0.1:{port}"

[[checks]]
name = "gone"
kind = "tcp"
address = "127.0.0.1:{closed}"
critical = false
"#
    )
}

fn prometheus(stage: &Stage) -> anyhow::Result<String> {
    let dir = stage.dir("prometheus")?;
    let deploy = stage.root.join("deploy/prometheus");
    // promtool on the shipped rules and their unit tests, as they are.
    let promtool = |args: &[&str], input: Option<&str>| -> anyhow::Result<String> {
        let mut child = Command::new("promtool")
            .args(args)
            .current_dir(&deploy)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = input {
            use std::io::Write;
            child.stdin.take().expect("piped").write_all(input.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned();
        ensure!(output.status.success(), "promtool {}: {text}", args.join(" "));
        Ok(text)
    };
    promtool(&["check", "rules", "healthd.rules.yml"], None)?;
    let tested = promtool(&["test", "rules", "healthd.rules.test.yml"], None)?;
    ensure!(tested.contains("SUCCESS"), "promtool test rules: {tested}");

    let port = free_port()?;
    let closed = free_port()?;
    let healthd = stage.healthd("healthd", port, &scraped_config(port, closed), &dir, &[])?;
    // promtool check metrics on healthd's exposition (every check has run once).
    let exposition = http(local(port), None, "GET", "/metrics", &[("Authorization", &bearer())])?;
    ensure!(exposition.status == 200, "/metrics with the token: {}", exposition.status);
    let lint = promtool(&["check", "metrics"], Some(&exposition.body))?;
    ensure!(lint.trim().is_empty(), "promtool check metrics: {lint}");

    // Prometheus, from the shipped scrape config beside the shipped rules.
    let config = render(
        &stage.root,
        "deploy/prometheus/prometheus.yml",
        &[("\"127.0.0.1:8080\"", format!("\"127.0.0.1:{port}\""))],
    )?;
    std::fs::write(dir.join("prometheus.yml"), config)?;
    std::fs::write(dir.join("healthd-token"), TOKEN)?;
    link_rules(&dir, &deploy)?;
    promtool(&["check", "config", dir.join("prometheus.yml").to_str().context("path")?], None)?;
    let (_prometheus, web, target) =
        start_prometheus(&dir, &deploy, "Prometheus scraping healthd")?;
    let api = |path: &str| prometheus_api(web, path);
    let mut answer = Value::Null;
    wait_until("healthd_check_up for every check", DEADLINE, || {
        answer = api("/api/v1/query?query=healthd_check_up").unwrap_or(Value::Null);
        answer["data"]["result"].as_array().is_some_and(|result| result.len() == 3)
    })
    .with_context(|| format!("the answer: {answer}"))?;
    excerpt("Prometheus /api/v1/query?query=healthd_check_up", &answer.to_string());
    let mut up = BTreeMap::new();
    for series in answer["data"]["result"].as_array().context("result")? {
        let check = series["metric"]["check"].as_str().context("check label")?.to_string();
        up.insert(check, series["value"][1].as_str().context("value")?.to_string());
    }
    let expected: BTreeMap<String, String> =
        [("disk", "1"), ("gone", "0"), ("self", "1")].map(|(c, v)| (c.into(), v.into())).into();
    ensure!(up == expected, "healthd_check_up by check: {up:?}");
    // The shipped rules, loaded and evaluated without error (health is
    // "unknown" until the first evaluation, within evaluation_interval).
    let mut rules = Value::Null;
    let evaluated = |rules: &Value| -> Vec<String> {
        let group = &rules["data"]["groups"][0]["rules"];
        let rules = group.as_array().map(Vec::as_slice).unwrap_or_default();
        rules
            .iter()
            .filter(|rule| rule["health"] == "ok")
            .filter_map(|rule| rule["name"].as_str().map(str::to_string))
            .collect()
    };
    wait_until("the alert rules evaluated", DEADLINE, || {
        rules = api("/api/v1/rules").unwrap_or(Value::Null);
        evaluated(&rules).len() == 4
    })
    .with_context(|| format!("the rules: {rules}"))?;
    let loaded = evaluated(&rules);
    let scraped = healthd.wait_for_line("for Prometheus' scrape", DEADLINE, |line| {
        line.contains("\"path\":\"/metrics\"") && line.contains("\"principal\":\"prometheus\"")
    })?;
    ensure!(scraped.text.contains("\"status\":200"), "{}", scraped.text);
    Ok(format!(
        "promtool: check rules, test rules, check metrics (no problem), check config; \
         target up ({}), healthd_check_up {up:?}, {} alert rules loaded",
        target["scrapeUrl"].as_str().unwrap_or("?"),
        loaded.len()
    ))
}

// --- HTTPS and mutual TLS -----------------------------------------------------

/// Prometheus from `dir/prometheus.yml`, beside the shipped rules, on a
/// free port; returns once its first target is up, with that target.
fn start_prometheus(dir: &Path, deploy: &Path, what: &str) -> anyhow::Result<(Server, u16, Value)> {
    let rules = dir.join("healthd.rules.yml");
    let _ = std::fs::remove_file(&rules);
    std::os::unix::fs::symlink(deploy.join("healthd.rules.yml"), &rules)?;
    let web = free_port()?;
    let mut command = Command::new("prometheus");
    command
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .current_dir(dir);
    let prometheus = Server::spawn("prometheus", command, &dir.join("prometheus.log"))?;
    // The first scrape comes within one scrape interval (10 s) of the start.
    let mut target = Value::Null;
    wait_until(what, Duration::from_secs(60), || {
        target = prometheus_api(web, "/api/v1/targets")
            .map_or(Value::Null, |v| v["data"]["activeTargets"][0].clone());
        target["health"] == "up"
    })
    .with_context(|| format!("the target: {target}"))?;
    Ok((prometheus, web, target))
}

/// The shipped rules beside `dir/prometheus.yml`, as it names them.
fn link_rules(dir: &Path, deploy: &Path) -> anyhow::Result<()> {
    let rules = dir.join("healthd.rules.yml");
    let _ = std::fs::remove_file(&rules);
    std::os::unix::fs::symlink(deploy.join("healthd.rules.yml"), &rules)?;
    Ok(())
}

/// A GET of Prometheus' HTTP API on `web`, as JSON.
fn prometheus_api(web: u16, path: &str) -> anyhow::Result<Value> {
    let answer = http(local(web), None, "GET", path, &[])?;
    ensure!(answer.status == 200, "{path}: {} {}", answer.status, answer.body);
    Ok(serde_json::from_str(&answer.body)?)
}

fn mutual_tls_config(port: u16, tls: &Path, ca: &Path) -> String {
    let (chain, key) = (tls.join("healthd.crt"), tls.join("healthd.key"));
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
service_id = "mutual-tls"
drain_delay = "0s"

[server.tls]
certificate = {chain:?}
key = {key:?}
client_ca = {ca:?}
client_auth = "required"

[access]
details = "authorized"
trusted_proxies = ["127.0.0.1/32"]         # nginx
[[access.tokens]]
name = "ops"
env = "HEALTHD_TOKEN"
[[access.clients]]
name = "prometheus"
dns_name = "prometheus.monitoring.svc"

[[checks]]
name = "disk"
kind = "disk"
path = "/"
warn_below = "0%"
fail_below = "0%"
"#
    )
}

/// healthd serving HTTPS with `client_auth = "required"`: Prometheus
/// scrapes `/metrics` with its client certificate (a principal, no token),
/// nginx proxies to it over HTTPS with its own (anonymous: the token it
/// passes through decides), plain HTTP gets nothing.
fn mtls(stage: &Stage) -> anyhow::Result<String> {
    let dir = stage.dir("mtls")?;
    let certs = healthd_testkit::certs::TestCerts::new();
    let server = certs.for_names(&["orders-api-health.orders.svc", "127.0.0.1"]);
    let prometheus_client = certs.client(&["prometheus.monitoring.svc"]);
    let nginx_client = certs.client(&["nginx.ingress.svc"]);
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    for (from, to) in [
        (&server.chain, "healthd.crt"),
        (&server.key, "healthd.key"),
        (&certs.ca_path().to_path_buf(), "ca.crt"),
        (&prometheus_client.cert, "prometheus.crt"),
        (&prometheus_client.key, "prometheus.key"),
        (&nginx_client.cert, "nginx.crt"),
        (&nginx_client.key, "nginx.key"),
    ] {
        std::fs::copy(from, tls.join(to)).with_context(|| format!("copying {to}"))?;
    }
    let port = free_port()?;
    let healthd = stage.spawn_healthd(
        "healthd",
        &mutual_tls_config(port, &tls, &tls.join("ca.crt")),
        &dir,
        &[],
    )?;
    healthd
        .wait_for_line("healthd serving", DEADLINE, |line| line.contains("healthd is serving"))?;
    ensure!(
        http(local(port), None, "GET", "/health/live", &[]).is_err(),
        "plain HTTP on the HTTPS port got an answer"
    );

    // nginx, from the shipped file, proxying over HTTPS with its certificate.
    let gateway = free_port()?;
    let site = render(
        &stage.root,
        "deploy/nginx/healthd-https.conf",
        &[
            ("server 127.0.0.1:8443;", format!("server 127.0.0.1:{port};")),
            ("listen 80;", format!("listen 127.0.0.1:{gateway};")),
            ("/etc/nginx/healthd/ca.crt", tls.join("ca.crt").display().to_string()),
            ("/etc/nginx/healthd/nginx.crt", tls.join("nginx.crt").display().to_string()),
            ("/etc/nginx/healthd/nginx.key", tls.join("nginx.key").display().to_string()),
        ],
    )?;
    let nginx_dir = stage.dir("mtls/nginx")?;
    let _nginx = start_nginx(&nginx_dir, &site)?;
    wait_until("healthd ready through nginx over HTTPS", DEADLINE, || {
        http(local(gateway), None, "GET", "/ops/health/ready", &[]).is_ok_and(|a| a.status == 200)
    })?;
    let auth = bearer();
    let anonymous = http(local(gateway), None, "GET", "/ops/health", &[])?;
    let with_token =
        http(local(gateway), None, "GET", "/ops/health", &[("Authorization", auth.as_str())])?;
    let metrics = http(local(gateway), None, "GET", "/ops/metrics", &[])?;
    ensure!(
        anonymous.status == 200 && !anonymous.body.contains("\"checks\""),
        "/ops/health through nginx, no token: {} {}",
        anonymous.status,
        anonymous.body
    );
    ensure!(
        with_token.status == 200 && with_token.body.contains("\"checks\""),
        "/ops/health through nginx, with the token: {} {}",
        with_token.status,
        with_token.body
    );
    ensure!(metrics.status == 401, "/ops/metrics through nginx, no token: {}", metrics.status);
    let through_nginx =
        healthd.wait_for_line("nginx's request with the token", DEADLINE, |line| {
            line.contains("\"path\":\"/health\"") && line.contains("\"principal\":\"ops\"")
        })?;
    excerpt("healthd's access log, through nginx", &through_nginx.text);

    // Prometheus, from the shipped file, with its client certificate.
    let deploy = stage.root.join("deploy/prometheus");
    let config = render(
        &stage.root,
        "deploy/prometheus/prometheus-mtls.yml",
        &[("\"orders-api-health.orders.svc:8443\"", format!("\"127.0.0.1:{port}\""))],
    )?;
    let prometheus_dir = stage.dir("mtls/prometheus")?;
    std::fs::write(prometheus_dir.join("prometheus.yml"), config)?;
    for (from, to) in [
        ("ca.crt", "healthd-ca.crt"),
        ("prometheus.crt", "prometheus.crt"),
        ("prometheus.key", "prometheus.key"),
    ] {
        std::fs::copy(tls.join(from), prometheus_dir.join(to))?;
    }
    let (_prometheus, web, target) =
        start_prometheus(&prometheus_dir, &deploy, "Prometheus scraping healthd over mTLS")?;
    let api = |path: &str| prometheus_api(web, path);
    let mut answer = Value::Null;
    wait_until("healthd_check_up scraped over mTLS", DEADLINE, || {
        answer = api("/api/v1/query?query=healthd_check_up").unwrap_or(Value::Null);
        answer["data"]["result"].as_array().is_some_and(|result| result.len() == 1)
    })
    .with_context(|| format!("the answer: {answer}"))?;
    let scraped =
        healthd.wait_for_line("Prometheus' scrape with its certificate", DEADLINE, |line| {
            line.contains("\"path\":\"/metrics\"") && line.contains("\"principal\":\"prometheus\"")
        })?;
    ensure!(scraped.text.contains("\"status\":200"), "{}", scraped.text);
    excerpt("healthd's access log, Prometheus' scrape", &scraped.text);
    Ok(format!(
        "client_auth required; plain HTTP refused; nginx over HTTPS with its certificate \
         (anonymous without the token, details with it, /metrics 401); Prometheus scraping \
         {} with its certificate as principal \"prometheus\"",
        target["scrapeUrl"].as_str().unwrap_or("?")
    ))
}

// --- Kubernetes ---------------------------------------------------------------

fn kubernetes(stage: &Stage) -> anyhow::Result<String> {
    let dir = stage.dir("kubernetes")?;
    let file = "deploy/kubernetes/healthd.yaml";
    let manifest = std::fs::read_to_string(stage.root.join(file))?;
    let readme = std::fs::read_to_string(stage.root.join("README.md"))?;
    ensure!(readme.contains(&manifest), "README.md does not show {file} as it is");
    let mut documents = BTreeMap::new();
    for document in serde_norway::Deserializer::from_str(&manifest) {
        let document: Value = serde::Deserialize::deserialize(document)?;
        let kind = document["kind"].as_str().context("a document without kind")?.to_string();
        documents.insert(kind, document);
    }
    let config_map = documents.get("ConfigMap").context("no ConfigMap")?;
    let deployment = documents.get("StatefulSet").context("no StatefulSet")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let config = config_map["data"]["healthd.toml"].as_str().context("no healthd.toml")?;
    let mount = container["volumeMounts"][0]["mountPath"].as_str().context("mountPath")?;

    // The container's args and env, with the config where the volume puts
    // it, a free port for the listen address, and test values for the Secrets.
    let postgres = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(healthd_testkit::postgres::TestPostgres::start());
    let port = free_port()?;
    let config_path = dir.join("healthd.toml");
    // The store's volume is a folder of the stage's, emptied first.
    let store_mount = container["volumeMounts"]
        .as_array()
        .and_then(|mounts| mounts.iter().find(|mount| mount["name"] == "store"))
        .and_then(|mount| mount["mountPath"].as_str())
        .context("no store volume")?;
    let store_dir = dir.join("store");
    let _ = std::fs::remove_dir_all(&store_dir);
    std::fs::create_dir_all(&store_dir)?;
    let config = config.replace(store_mount, &store_dir.display().to_string());
    std::fs::write(&config_path, config)?;
    let args: Vec<String> = container["args"]
        .as_array()
        .context("args")?
        .iter()
        .map(|arg| {
            let arg = arg.as_str().unwrap_or_default();
            let in_volume = format!("{mount}/healthd.toml");
            if arg == in_volume {
                config_path.display().to_string()
            } else {
                arg.to_string()
            }
        })
        .collect();
    let mut command = Command::new(Profile::Debug.binary(&stage.root, "healthd"));
    command.args(&args).env_remove("HEALTHD_CONFIG");
    let mut listen_port = None;
    for variable in container["env"].as_array().context("env")? {
        let name = variable["name"].as_str().context("env name")?;
        let value = match (name, variable["value"].as_str()) {
            ("HEALTHD_LISTEN", Some(value)) => {
                listen_port = value.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                format!("127.0.0.1:{port}")
            }
            (_, Some(value)) => value.to_string(),
            ("DATABASE_URL", None) => postgres.url(),
            (_, None) => TOKEN.to_string(),
        };
        command.env(name, value);
    }
    ensure!(
        listen_port == container["ports"][0]["containerPort"].as_u64().map(|p| p as u16),
        "HEALTHD_LISTEN and containerPort differ"
    );
    let check = Command::new(Profile::Debug.binary(&stage.root, "healthd"))
        .args(["check-config", "--config"])
        .arg(&config_path)
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()?;
    ensure!(check.status.success(), "check-config: {}", String::from_utf8_lossy(&check.stderr));
    let mut healthd = Server::spawn("healthd", command, &dir.join("healthd.log"))?;

    // The probes, as the kubelet runs them: startup within its budget, then the others.
    let probe_path = |probe: &str| -> anyhow::Result<String> {
        let path = container[probe]["httpGet"]["path"].as_str().context("a probe path")?;
        ensure!(stage_contract_has(stage, path)?, "{probe} path {path} is not in openapi.yaml");
        Ok(path.to_string())
    };
    let startup = probe_path("startupProbe")?;
    let budget = container["startupProbe"]["periodSeconds"].as_u64().unwrap_or(10)
        * container["startupProbe"]["failureThreshold"].as_u64().unwrap_or(3);
    let started = Instant::now();
    wait_until("the startup probe answering 200", Duration::from_secs(budget), || {
        http(local(port), None, "GET", &startup, &[]).is_ok_and(|a| a.status == 200)
    })?;
    let startup_took = started.elapsed();
    let (live, ready) = (probe_path("livenessProbe")?, probe_path("readinessProbe")?);
    for path in [&live, &ready] {
        let answer = http(local(port), None, "GET", path, &[])?;
        ensure!(answer.status == 200, "{path}: {}", answer.status);
    }

    // SIGTERM: readiness 503 at once, liveness 200, exit 0 inside the grace period.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().context("grace period")?;
    let sigterm = Instant::now();
    healthd.signal(libc::SIGTERM);
    wait_until("readiness answering 503 after SIGTERM", Duration::from_secs(2), || {
        http(local(port), None, "GET", &ready, &[]).is_ok_and(|a| a.status == 503)
    })?;
    let live_answer = http(local(port), None, "GET", &live, &[])?;
    ensure!(live_answer.status == 200, "liveness while draining: {}", live_answer.status);
    let exit = healthd.wait_exit(Duration::from_secs(grace))?;
    let stopped = sigterm.elapsed();
    ensure!(exit.success(), "healthd exited with {exit}");
    Ok(format!(
        "{file} (as the README shows it): check-config OK; startup probe 200 after {:.1} s \
         (budget {budget} s), liveness and readiness 200; SIGTERM: readiness 503, liveness 200, \
         exit 0 after {:.1} s (grace {grace} s)",
        startup_took.as_secs_f64(),
        stopped.as_secs_f64()
    ))
}

fn stage_contract_has(stage: &Stage, path: &str) -> anyhow::Result<bool> {
    let contract: Value =
        serde_norway::from_str(&std::fs::read_to_string(stage.root.join("openapi.yaml"))?)?;
    Ok(contract["paths"].get(path).is_some())
}
