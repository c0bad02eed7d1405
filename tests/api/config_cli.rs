//! The binary's config handling: `check-config` exits 0, or 2 with one line
//! per problem naming the file, the key and the reason.

use std::path::PathBuf;
use std::process::{Command, Output};

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("healthd-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn healthd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_healthd"))
        .args(args)
        .env_remove("HEALTHD_CONFIG")
        .env_remove("HEALTHD_LISTEN")
        .env_remove("HEALTHD_LOG_FORMAT")
        .output()
        .unwrap()
}

/// Runs `check-config` on `text` and returns (exit code, stderr).
fn check_config(name: &str, text: &str) -> (i32, String, PathBuf) {
    let path = write_config(name, text);
    let output = healthd(&["check-config", "--config", path.to_str().unwrap()]);
    (output.status.code().unwrap(), String::from_utf8(output.stderr).unwrap(), path)
}

fn assert_rejected(name: &str, text: &str, key: &str, reason: &str) {
    let (code, stderr, path) = check_config(name, text);
    assert_eq!(code, 2, "{stderr}");
    let line = stderr
        .lines()
        .find(|line| line.contains(reason))
        .unwrap_or_else(|| panic!("no line says {reason:?}: {stderr}"));
    assert!(line.starts_with(&format!("{}: {key}: ", path.display())), "{line}");
}

#[test]
fn a_valid_config_passes_check_config() {
    let (code, stderr, _) = check_config(
        "valid.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[[checks]]\nname = \"disk\"\nkind = \"disk\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn an_unknown_key_is_rejected_with_its_name() {
    assert_rejected(
        "unknown.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nport = 1\n",
        "server.port",
        "unknown field `port`",
    );
}

#[test]
fn a_bad_duration_is_rejected() {
    assert_rejected(
        "duration.toml",
        "[defaults]\ninterval = \"ten seconds\"\n",
        "defaults.interval",
        "invalid duration",
    );
}

#[test]
fn a_bad_listen_address_is_rejected() {
    assert_rejected(
        "listen.toml",
        "[server]\nlisten = \"localhost\"\n",
        "server.listen",
        "invalid listen address",
    );
}

#[test]
fn a_duplicate_check_name_is_rejected() {
    let text =
        "[[checks]]\nname = \"d\"\nkind = \"disk\"\n[[checks]]\nname = \"d\"\nkind = \"disk\"\n";
    assert_rejected("duplicate.toml", text, "checks[1].name", "duplicate check name");
}

#[test]
fn a_timeout_that_does_not_fit_inside_the_interval_is_rejected() {
    let text = "[[checks]]\nname = \"t\"\nkind = \"tcp\"\naddress = \"127.0.0.1:9\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nretries = 2\n";
    assert_rejected("timeout.toml", text, "checks[0]", "does not fit inside interval");
}

#[test]
fn every_problem_gets_its_own_line() {
    let text = "[access]\nallow = [\"10.0.0.0/33\"]\n[[checks]]\nname = \"x\"\nkind = \"carrier-pigeon\"\n";
    let (code, stderr, _) = check_config("several.toml", text);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(stderr.contains("access.allow[0]"), "{stderr}");
    assert!(stderr.contains("checks[0].kind: unknown kind \"carrier-pigeon\""), "{stderr}");
}

#[test]
fn a_missing_file_is_named() {
    let output = healthd(&["check-config", "--config", "/no/such/healthd.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("/no/such/healthd.toml: "));
}

#[test]
fn running_with_a_bad_config_exits_2_before_serving() {
    let path = write_config("run-bad.toml", "[server]\nlisten = \"nope\"\n");
    let output = healthd(&["--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.listen"));
}

#[test]
fn hash_token_prints_the_sha256_of_stdin() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_healthd"))
        .arg("hash-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/healthd.example.toml");
    let output = healthd(&["check-config", "--config", example]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_fixed_prefix_needs_trusted_proxies_and_a_plain_path() {
    assert_rejected(
        "prefix-untrusted.toml",
        "[access]\nforwarded_prefix = \"/ops\"\n",
        "access.forwarded_prefix",
        "lists none",
    );
    assert_rejected(
        "prefix-bad.toml",
        "[access]\ntrusted_proxies = [\"10.0.0.1\"]\nforwarded_prefix = \"ops\"\n",
        "access.forwarded_prefix",
        "invalid path prefix",
    );
}

#[test]
fn each_subcommand_has_its_own_help_with_the_environment() {
    let top = healthd(&["--help"]);
    assert_eq!(top.status.code(), Some(0));
    let top = String::from_utf8(top.stdout).unwrap();
    for text in ["check-config", "hash-token", "[env: HEALTHD_CONFIG=]", "HEALTHD_LISTEN"] {
        assert!(top.contains(text), "healthd --help lacks {text}: {top}");
    }
    let check = healthd(&["check-config", "--help"]);
    assert_eq!(check.status.code(), Some(0));
    let check = String::from_utf8(check.stdout).unwrap();
    assert!(check.starts_with("Validate a config without running it"), "{check}");
    assert!(check.contains("Usage: healthd check-config"), "{check}");
    let hash = String::from_utf8(healthd(&["hash-token", "--help"]).stdout).unwrap();
    assert!(hash.contains("Usage: healthd hash-token"), "{hash}");
}

#[test]
fn usage_errors_exit_2_and_point_to_the_help() {
    for args in [&["--bogus"][..], &["check-config", "extra"], &["--log-format", "xml"], &["nope"]]
    {
        let output = healthd(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains("try '--help'"), "{args:?}: {stderr}");
    }
}

#[test]
fn the_readme_shows_the_help_as_healthd_prints_it() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for args in [&["--help"][..], &["check-config", "--help"]] {
        let help = String::from_utf8(healthd(args).stdout).unwrap();
        let shown = format!("$ healthd {}\n{help}", args.join(" "));
        assert!(
            readme.contains(&shown),
            "README.md does not show `healthd {}` as printed:\n{help}",
            args.join(" ")
        );
    }
}

/// One check of `kind` with `keys`, as a config text.
#[cfg(all(feature = "amqp", feature = "nats"))]
fn one_check(kind: &str, keys: &str) -> String {
    format!("[[checks]]\nname = \"c\"\nkind = \"{kind}\"\n{keys}\n")
}

#[cfg(all(feature = "amqp", feature = "nats"))]
#[test]
fn broker_urls_with_a_password_in_the_file_are_refused() {
    for (kind, url) in [
        ("amqp", "amqp://guest:secret@mq.example:5672/%2f"),
        ("nats", "nats://user:secret@127.0.0.1:4222"),
        // A lone user name is how NATS carries a token.
        ("nats", "nats://a-token@127.0.0.1:4222"),
    ] {
        let text = one_check(kind, &format!("url = \"{url}\""));
        let (code, stderr, path) = check_config(&format!("{kind}-credentials.toml"), &text);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(&format!("{}: checks[0].url: holds credentials", path.display())),
            "{stderr}"
        );
        assert!(!stderr.contains("secret") && !stderr.contains("a-token"), "{stderr}");
    }
}

#[cfg(all(feature = "amqp", feature = "nats", feature = "grpc"))]
#[test]
fn the_new_kinds_name_the_key_that_is_wrong() {
    let cases = [
        (
            "amqp",
            "url = \"http://mq.example:5672\"",
            "checks[0].url",
            "not an amqp:// or amqps:// URL",
        ),
        (
            "amqp",
            "url = \"amqp://127.0.0.1\"\nwarn_above_messages = 5",
            "checks[0].warn_above_messages",
            "needs a queue",
        ),
        (
            "nats",
            "url = \"nats://127.0.0.1:4222\"\ntoken_env = \"HEALTHD_NO_SUCH_VAR\"",
            "checks[0].token_env",
            "is not set",
        ),
        (
            "grpc",
            "address = \"127.0.0.1:50051\"",
            "checks[0].address",
            "expected http://HOST:PORT or https://HOST:PORT",
        ),
        (
            "grpc",
            "address = \"http://127.0.0.1:50051\"\nca_file = \"/etc/hostname\"",
            "checks[0].ca_file",
            "needs an https:// address",
        ),
        ("tls", "address = \"127.0.0.1\"", "checks[0].address", "expected HOST:PORT"),
        (
            "tls",
            "address = \"127.0.0.1:443\"\nwarn_below = \"2 weeks\"",
            "checks[0].warn_below",
            "such as \"14d\"",
        ),
        (
            "tls",
            "address = \"127.0.0.1:443\"\nwarn_below = \"5d\"\nfail_below = \"7d\"",
            "checks[0].fail_below",
            "7d is above warn_below = 5d",
        ),
        (
            "tls",
            "address = \"127.0.0.1:443\"\nca_file = \"/no/such/ca.pem\"",
            "checks[0].ca_file",
            "/no/such/ca.pem",
        ),
        (
            "http",
            "url = \"https://127.0.0.1/\"\nca_file = \"/no/such/ca.pem\"",
            "checks[0].ca_file",
            "/no/such/ca.pem",
        ),
    ];
    for (index, (kind, keys, key, reason)) in cases.iter().enumerate() {
        assert_rejected(&format!("new-kind-{index}.toml"), &one_check(kind, keys), key, reason);
    }
}

/// The host kinds' mistakes, each named by file, key and reason.
#[test]
fn the_host_kinds_name_the_key_that_is_wrong() {
    let cases = [
        ("file", "max_age = \"1h\"", "checks[0].path", "is required for kind \"file\""),
        ("file", "path = \"backup.tar\"", "checks[0].path", "is relative"),
        ("file", "path = \"/x\"\nmax_age = \"a day\"", "checks[0].max_age", "invalid duration"),
        (
            "file",
            "path = \"/x\"\nwarn_age = \"2h\"\nmax_age = \"1h\"",
            "checks[0].warn_age",
            "2h is not below max_age = 1h",
        ),
        ("file", "path = \"/x\"\nmin_size = \"10 parsecs\"", "checks[0].min_size", "invalid size"),
        (
            "file",
            "path = \"/x\"\nmin_size = \"2KB\"\nmax_size = 100",
            "checks[0].min_size",
            "2000 bytes is above max_size = 100 bytes",
        ),
        ("file", "path = \"/x\"\nmaxage = \"1h\"", "checks[0].maxage", "unknown field `maxage`"),
        // A common key, through the same one-line reasons.
        (
            "file",
            "path = \"/x\"\ntimeout = \"later\"",
            "checks[0].timeout",
            "invalid duration \"later\"",
        ),
        ("exec", "env = []", "checks[0].command", "is required for kind \"exec\""),
        ("exec", "command = []", "checks[0].command", "is empty"),
        ("exec", "command = [\"check_load\"]", "checks[0].command", "is not an absolute path"),
        (
            "exec",
            "command = [\"/no/such/plugin\"]",
            "checks[0].command",
            "/no/such/plugin: no such file",
        ),
        ("exec", "command = [\"/etc/passwd\"]", "checks[0].command", "not an executable file"),
        (
            "exec",
            "command = [\"/bin/true\"]\nenv = [\"HEALTHD_NO_SUCH_VAR\"]",
            "checks[0].env",
            "environment variable HEALTHD_NO_SUCH_VAR is not set",
        ),
        (
            "exec",
            "command = [\"/bin/true\"]\nperfdata = [\"a=b\"]",
            "checks[0].perfdata[0]",
            "\"a=b\" is not a perfdata label",
        ),
        (
            "exec",
            "command = [\"/bin/true\"]\nperfdata = [\"t\", { label = \"t\", units = \"s\" }]",
            "checks[0].perfdata[1]",
            "unknown key `units`, expected `label` or `unit`",
        ),
        (
            "exec",
            "command = [\"/bin/true\"]\nperfdata = [\"t\", \"t\"]",
            "checks[0].perfdata[1]",
            "\"t\" is listed twice",
        ),
        #[cfg(feature = "dns")]
        ("dns", "servers = [\"127.0.0.1\"]", "checks[0].domain", "is required for kind \"dns\""),
        #[cfg(feature = "dns")]
        ("dns", "domain = \"a..b\"", "checks[0].domain", "\"a..b\" is not a domain name"),
        #[cfg(feature = "dns")]
        (
            "dns",
            "domain = \"a.test\"\nrecord_type = \"AAAAA\"",
            "checks[0].record_type",
            "unknown record type \"AAAAA\"",
        ),
        #[cfg(feature = "dns")]
        (
            "dns",
            "domain = \"a.test\"\nservers = [\"dns.internal\"]",
            "checks[0].servers",
            "\"dns.internal\" is not IP or IP:PORT",
        ),
        #[cfg(feature = "dns")]
        (
            "dns",
            "domain = \"a.test\"\nprotocol = \"quic\"",
            "checks[0].protocol",
            "expected \"udp\" or \"tcp\"",
        ),
        #[cfg(feature = "dns")]
        (
            "dns",
            "domain = \"a.test\"\nexpect_regex = \"(\"",
            "checks[0].expect_regex",
            "invalid regular expression",
        ),
        #[cfg(feature = "dns")]
        (
            "dns",
            "domain = \"a.test\"\nexpect_rcode = \"GONE\"",
            "checks[0].expect_rcode",
            "unknown response code \"GONE\"",
        ),
        #[cfg(feature = "dns")]
        (
            "dns",
            "domain = \"a.test\"\nexpect_rcode = \"NXDOMAIN\"\nexpect_contains = [\"10.0.0.1\"]",
            "checks[0].expect_rcode",
            "NXDOMAIN has no answers to hold",
        ),
        #[cfg(feature = "mqtt")]
        ("mqtt", "topic = \"a\"", "checks[0].url", "is required for kind \"mqtt\""),
        #[cfg(feature = "mqtt")]
        (
            "mqtt",
            "url = \"tcp://127.0.0.1:1883\"",
            "checks[0].url",
            "not an mqtt:// or mqtts:// URL",
        ),
        #[cfg(feature = "mqtt")]
        ("mqtt", "url = \"mqtt://user:secret@127.0.0.1\"", "checks[0].url", "holds credentials"),
        #[cfg(feature = "mqtt")]
        ("mqtt", "url = \"mqtt://127.0.0.1:99999\"", "checks[0].url", "expected mqtt://HOST:PORT"),
        #[cfg(feature = "mqtt")]
        (
            "mqtt",
            "url = \"mqtt://127.0.0.1\"\npassword_env = \"P\"",
            "checks[0].password_env",
            "needs username_env",
        ),
        #[cfg(feature = "mqtt")]
        (
            "mqtt",
            "url = \"mqtt://127.0.0.1\"\nusername_env = \"HEALTHD_NO_SUCH_VAR\"",
            "checks[0].username_env",
            "environment variable HEALTHD_NO_SUCH_VAR is not set",
        ),
        #[cfg(feature = "mqtt")]
        (
            "mqtt",
            "url = \"mqtt://127.0.0.1\"\nca_file = \"/etc/hostname\"",
            "checks[0].ca_file",
            "needs an mqtts:// url",
        ),
        #[cfg(feature = "mqtt")]
        ("mqtt", "url = \"mqtt://127.0.0.1\"\ntopic = \"a/#\"", "checks[0].topic", "no wildcards"),
        #[cfg(feature = "icmp")]
        ("icmp", "count = 3", "checks[0].address", "is required for kind \"icmp\""),
        #[cfg(feature = "icmp")]
        ("icmp", "address = \"gateway.internal\"", "checks[0].address", "is not an IP address"),
        #[cfg(feature = "icmp")]
        ("icmp", "address = \"127.0.0.1\"\ncount = 0", "checks[0].count", "0: from 1 to 100"),
        #[cfg(feature = "icmp")]
        (
            "icmp",
            "address = \"127.0.0.1\"\ncount = 20\nping_interval = \"100ms\"",
            "checks[0].count",
            "20 requests 100 ms apart take 1900 ms to send, more than half of timeout (2000 ms)",
        ),
        #[cfg(feature = "icmp")]
        (
            "icmp",
            "address = \"127.0.0.1\"\nwarn_loss = \"50%\"\nfail_loss = \"10%\"",
            "checks[0].warn_loss",
            "50% is above fail_loss = 10%",
        ),
        #[cfg(feature = "icmp")]
        (
            "icmp",
            "address = \"127.0.0.1\"\nwarn_rtt = \"fast\"",
            "checks[0].warn_rtt",
            "invalid duration \"fast\"",
        ),
    ];
    for (index, (kind, keys, key, reason)) in cases.iter().enumerate() {
        let text = format!("[[checks]]\nname = \"c\"\nkind = \"{kind}\"\n{keys}\n");
        let name = format!("host-kind-{index}.toml");
        assert_rejected(&name, &text, key, reason);
        // One line per problem, nothing else.
        let (_, stderr, path) = check_config(&name, &text);
        let prefix = format!("{}: ", path.display());
        assert!(stderr.lines().all(|line| line.starts_with(&prefix)), "{stderr}");
    }
}

#[test]
fn a_connection_cap_that_leaves_the_checks_no_reserve_is_refused_under_the_limit() {
    use std::os::unix::process::CommandExt;
    // One worker and one tcp check under 256 open files: the reserve is the
    // check's 1 and the process's 32, so 223 is the most a cap may be.
    let config = |cap: usize| {
        format!("[server]\nworkers = 1\nmax_connections = {cap}\n[[checks]]\nname = \"t\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n")
    };
    let check_config_limited = |name: &str, text: &str| {
        let path = write_config(name, text);
        let limit = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
        let mut command = Command::new(env!("CARGO_BIN_EXE_healthd"));
        command
            .args(["check-config", "--config", path.to_str().unwrap()])
            .env_remove("HEALTHD_LISTEN");
        // SAFETY: setrlimit(2) is async-signal-safe; the child is between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let output = command.output().unwrap();
        (output.status.code().unwrap(), String::from_utf8(output.stderr).unwrap(), path)
    };

    let (code, stderr, _) = check_config_limited("cap-fits.toml", &config(223));
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr, path) = check_config_limited("cap-too-high.toml", &config(224));
    assert_eq!(code, 2, "{stderr}");
    let expected = format!("{}: server.max_connections: 224 leaves no reserve", path.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(stderr.contains("at most 223 are left for clients"), "{stderr}");
}
