//! The config loader under mutated configs: valid configs of every kind,
//! mutated byte by byte, line by line and value by value, with paths to
//! what a file must not be (`/dev/zero`, a FIFO, a directory, a file too
//! large, one missing). Each case must end within a time limit with
//! settings or problems, never a panic, a hang or an abort; a sample runs
//! through the real `healthd check-config`, which must exit 0, or 2 with
//! one line per problem. `HEALTHD_FUZZ_SEED` replays a run,
//! `HEALTHD_FUZZ_CASES` sets how many cases it makes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use healthd::Settings;

/// One case may take this long; a read that hangs or never ends fails it.
const CASE_LIMIT: Duration = Duration::from_secs(5);

/// Files for configs to name: each what a file must not be, or an ordinary one.
struct Hostile {
    dir: PathBuf,
    paths: Vec<String>,
}

impl Hostile {
    fn make(name: &str) -> Hostile {
        let dir = std::env::temp_dir().join(format!("healthd-fuzz-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let large = dir.join("large.pem");
        std::fs::write(&large, vec![b'A'; 5 * 1024 * 1024]).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, b"-----BEGIN CERTIFICATE-----\n%%%\n").unwrap();
        let paths = [
            Path::new("/dev/zero"),
            Path::new("/dev/null"),
            Path::new("/dev/urandom"),
            &fifo,
            &dir,
            &large,
            &empty,
            &garbage,
            &dir.join("missing.pem"),
            Path::new("/proc/self/mem"),
        ]
        .iter()
        .map(|path| path.display().to_string())
        .collect();
        Hostile { dir, paths }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Valid configs to start from: one check of each kind healthd has, and
/// every section.
fn seeds() -> Vec<String> {
    let common = r#"
[server]
listen = "127.0.0.1:0"
service_id = "fuzz"
drain_delay = "1s"

[access]
details = "authorized"
allow = ["0.0.0.0/0", "::/0"]
details_allow = ["127.0.0.0/8"]
trusted_proxies = ["10.0.0.1"]
forwarded_prefix = "/ops"
[[access.tokens]]
name = "ops"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

[defaults]
interval = "10s"
timeout = "2s"
retries = 2
"#;
    let checks = [
        "[[checks]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"postgres://app@127.0.0.1:1/db?sslmode=verify-full\"\nca_file = \"/etc/ssl/certs/ca-certificates.crt\"\n",
        "[[checks]]\nname = \"api\"\nkind = \"http\"\nurl = \"https://127.0.0.1:1/health\"\nexpect_status = [200]\nca_file = \"/etc/ssl/certs/ca-certificates.crt\"\n",
        "[[checks]]\nname = \"cache\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\ncritical = false\nsend = \"PING\\r\\n\"\nexpect = \"^\\\\+PONG\"\n",
        "[[checks]]\nname = \"judged\"\nkind = \"http\"\nurl = \"http://127.0.0.1:1/health\"\nmax_body = \"64KiB\"\n[[checks.conditions]]\nsubject = \"$.components[?@.status != 'UP'].name\"\nop = \"absent\"\n[[checks.conditions]]\nsubject = \"length($.items)\"\nop = \">=\"\nvalue = 1\nseverity = \"warn\"\n[[checks.conditions]]\nsubject = \"header X-Mode\"\nop = \"matches\"\nvalue = \"^(primary|replica)$\"\n[[checks.conditions]]\nsubject = \"response_time\"\nop = \"<\"\nvalue = \"300ms\"\n",
        "[[checks]]\nname = \"disk\"\nkind = \"disk\"\npath = \"/\"\nwarn_below = \"10%\"\nfail_below = \"5%\"\n",
        "[[checks]]\nname = \"cert\"\nkind = \"tls\"\naddress = \"127.0.0.1:1\"\nca_file = \"/etc/ssl/certs/ca-certificates.crt\"\nwarn_below = \"14d\"\n",
        "[[checks]]\nname = \"grpc\"\nkind = \"grpc\"\naddress = \"https://127.0.0.1:1\"\nca_file = \"/etc/ssl/certs/ca-certificates.crt\"\n",
        "[[checks]]\nname = \"mq\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n",
        "[[checks]]\nname = \"my\"\nkind = \"mysql\"\nurl = \"mysql://app@127.0.0.1:1/db\"\nca_file = \"/etc/ssl/certs/ca-certificates.crt\"\n",
    ];
    let mut seeds: Vec<String> = checks.iter().map(|check| format!("{common}\n{check}")).collect();
    seeds.push(format!("{common}\n{}", checks.concat()));
    seeds
}

/// One mutation of `text`, picked by `rng`.
fn mutate(rng: &mut fastrand::Rng, text: &str, hostile: &Hostile) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let pick = |rng: &mut fastrand::Rng, lines: &[String]| rng.usize(..lines.len().max(1));
    match rng.u8(..9) {
        // A path that must not be read, where a path goes (or anywhere).
        0 | 1 => {
            let path = &hostile.paths[rng.usize(..hostile.paths.len())];
            let key = ["ca_file", "path", "url", "address"][rng.usize(..4)];
            let at = pick(rng, &lines);
            lines.insert(at.min(lines.len()), format!("{key} = \"{path}\""));
            let text = lines.join("\n");
            return text.replace("/etc/ssl/certs/ca-certificates.crt", path);
        }
        // A byte changed.
        2 => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let at = rng.usize(..bytes.len());
                bytes[at] = rng.u8(..);
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        // A line dropped, or doubled.
        3 if !lines.is_empty() => {
            let at = pick(rng, &lines);
            lines.remove(at);
        }
        4 if !lines.is_empty() => {
            let at = pick(rng, &lines);
            let line = lines[at].clone();
            lines.insert(at, line);
        }
        // A value swapped for one of another type or an extreme.
        5 if !lines.is_empty() => {
            let at = pick(rng, &lines);
            if let Some((key, _)) = lines[at].split_once('=') {
                let values = [
                    "-1",
                    "4294967296",
                    "18446744073709551616",
                    "\"\"",
                    "[]",
                    "{}",
                    "true",
                    "1e308",
                    "\"99999999999999999999h\"",
                    "\"0s\"",
                    "\"\u{0}\"",
                    "\"../../etc/passwd\"",
                    "\"%ff\"",
                    "\"/a b\"",
                    "\"300%\"",
                    "\"-5d\"",
                ];
                lines[at] = format!("{key}= {}", values[rng.usize(..values.len())]);
            }
        }
        // A section or a table header out of place.
        6 => {
            let at = pick(rng, &lines);
            let headers =
                ["[server]", "[[checks]]", "[access]", "[[access.tokens]]", "[defaults]", "[x]"];
            lines.insert(at.min(lines.len()), headers[rng.usize(..headers.len())].into());
        }
        // Text cut short.
        7 => {
            let mut end = rng.usize(..=text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            return text[..end].to_string();
        }
        _ => {
            let at = pick(rng, &lines);
            lines.insert(at.min(lines.len()), "unknown_key = 1".into());
        }
    }
    lines.join("\n")
}

/// Loads `text` as a file, on a thread of its own, within `CASE_LIMIT`:
/// the problems' count, or why the case failed.
fn load_within_limit(file: &Path, text: &str) -> Result<usize, String> {
    std::fs::write(file, text).unwrap();
    let (sender, receiver) = mpsc::channel();
    let path = file.to_path_buf();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(|| {
            Settings::load(Some(&path), &BTreeMap::<String, String>::new())
                .map_or_else(|error| error.problems.len(), |_| 0)
        });
        let _ = sender.send(result);
    });
    match receiver.recv_timeout(CASE_LIMIT) {
        Ok(Ok(problems)) => Ok(problems),
        Ok(Err(_)) => Err("the loader panicked".into()),
        Err(_) => Err(format!("the loader took more than {CASE_LIMIT:?}")),
    }
}

#[test]
fn mutated_configs_load_or_fail_with_problems_and_never_panic_hang_or_abort() {
    // Arrange
    let hostile = Hostile::make("mutated");
    let seed = std::env::var("HEALTHD_FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let cases: usize =
        std::env::var("HEALTHD_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(5_000);
    let mut rng = fastrand::Rng::with_seed(seed);
    let seeds = seeds();
    let file = hostile.dir.join("case.toml");
    let started = Instant::now();
    let (mut valid, mut refused) = (0, 0);

    // Act + Assert
    for case in 0..cases {
        let mut text = seeds[rng.usize(..seeds.len())].clone();
        for _ in 0..rng.usize(1..=4) {
            text = mutate(&mut rng, &text, &hostile);
        }
        match load_within_limit(&file, &text) {
            Ok(0) => valid += 1,
            Ok(_) => refused += 1,
            Err(why) => {
                panic!("case {case} (HEALTHD_FUZZ_SEED={seed}): {why}\n--- config ---\n{text}\n---")
            }
        }
    }
    println!(
        "MEASURED config fuzz: {cases} cases (seed {seed}) in {:.1} s: {valid} valid, {refused} refused with problems",
        started.elapsed().as_secs_f64()
    );
    assert!(refused > cases / 4, "mutations should break most configs: {refused} of {cases}");
}

#[test]
fn check_config_exits_0_or_2_with_a_line_per_problem_on_files_that_must_not_be_read() {
    // Arrange
    let hostile = Hostile::make("check-config");
    let binary = env!("CARGO_BIN_EXE_healthd");
    let named = hostile.dir.join("named.toml");
    for path in &hostile.paths {
        let naming = format!(
            "[[checks]]\nname = \"cert\"\nkind = \"tls\"\naddress = \"127.0.0.1:1\"\nca_file = \"{path}\"\n"
        );
        std::fs::write(&named, naming).unwrap();
        // The config itself at the path, or a config naming it.
        for config in [Path::new(path), named.as_path()] {
            // Act
            let mut child = std::process::Command::new(binary)
                .args(["check-config", "--config"])
                .arg(config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let started = Instant::now();
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    panic!("check-config on {} did not exit in 10 s", config.display());
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();

            // Assert: an empty regular file is a valid (empty) config; every
            // other path is refused, each problem on a line of its own.
            let empty_config = config == Path::new(path) && path.ends_with("empty.pem");
            if empty_config {
                assert_eq!(status.code(), Some(0), "{stderr}");
                continue;
            }
            assert_eq!(status.code(), Some(2), "{}: {status:?} {stderr}", config.display());
            let prefix = format!("{}: ", config.display());
            assert!(
                !stderr.is_empty() && stderr.lines().all(|line| line.starts_with(&prefix)),
                "{}: every line FILE: KEY: REASON:\n{stderr}",
                config.display()
            );
        }
    }
}
