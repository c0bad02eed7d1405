//! The healthd command: run the service, check a config, hash a token.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use healthd::config::{ProcessEnv, Settings};
use healthd::startup::Application;
use healthd::telemetry::{self, LogFormat};

const USAGE: &str = "\
usage: healthd [--config FILE] [--log-format text|json]   run the service
       healthd check-config [--config FILE]               validate a config: exit 0, or 2 with one line per problem
       healthd hash-token                                 read a token on stdin, print its SHA-256 for [[access.tokens]]

FILE defaults to $HEALTHD_CONFIG, else the built-in default (listen on 127.0.0.1:8080, check the disk).
$HEALTHD_LISTEN overrides server.listen; $HEALTHD_LOG_FORMAT sets the log format.";

enum Command {
    Run,
    CheckConfig,
    HashToken,
}

struct Args {
    command: Command,
    config: Option<PathBuf>,
    log_format: LogFormat,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        command: Command::Run,
        config: std::env::var_os("HEALTHD_CONFIG").map(PathBuf::from),
        log_format: match std::env::var("HEALTHD_LOG_FORMAT") {
            Ok(format) => format.parse().map_err(|error| format!("HEALTHD_LOG_FORMAT: {error}"))?,
            Err(_) => LogFormat::Text,
        },
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "check-config" => parsed.command = Command::CheckConfig,
            "hash-token" => parsed.command = Command::HashToken,
            "--config" | "-c" => {
                parsed.config = Some(args.next().ok_or("--config needs a file")?.into())
            }
            "--log-format" => {
                parsed.log_format = args.next().ok_or("--log-format needs text or json")?.parse()?
            }
            "--help" | "-h" => return Err(String::new()),
            "--version" | "-V" => {
                println!("healthd {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    keep_large_blocks_mapped();
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("healthd: {error}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.command {
        Command::HashToken => hash_token(),
        Command::CheckConfig => match Settings::load(args.config.as_deref(), &ProcessEnv) {
            Ok(settings) => {
                println!(
                    "config OK: {} check(s), listening on {}",
                    settings.checks.len(),
                    settings.server.listen
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::from(2)
            }
        },
        Command::Run => {
            let settings = match Settings::load(args.config.as_deref(), &ProcessEnv) {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init(args.log_format);
            let result = run(settings, args.config);
            if let Err(error) = &result {
                tracing::error!("{error:#}");
            }
            telemetry::flush();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("healthd: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// glibc raises its mmap threshold each time a large block is freed, and
/// from then on serves blocks of that size from heaps it seldom gives
/// back: with 10,000 checks, every `/metrics` and `/health` body (MBs)
/// would grow the resident set for good. Fixing the threshold at glibc's
/// default keeps large bodies in mappings that are returned when freed.
fn keep_large_blocks_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets an allocator parameter, under glibc's own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn run(settings: Settings, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut application = Application::build(settings).await?;
        // SIGHUP reads the same file again.
        if let Some(file) = config_file {
            application = application.reload_from(file);
        }
        application.run_until_stopped().await
    })
}

fn hash_token() -> ExitCode {
    let mut token = String::new();
    if std::io::stdin().read_to_string(&mut token).is_err() {
        eprintln!("healthd: cannot read the token from stdin");
        return ExitCode::FAILURE;
    }
    let token = token.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        eprintln!("healthd: the token on stdin is empty");
        return ExitCode::from(2);
    }
    let digest = healthd::http::access::sha256(token.as_bytes());
    println!("{}", digest.iter().map(|byte| format!("{byte:02x}")).collect::<String>());
    ExitCode::SUCCESS
}
