//! The healthd command: run the service, check a config, hash a token,
//! send a test alert.
//! The command line is clap's (derive): help for each subcommand, the
//! environment variables in it, and exit code 2 for usage errors.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use healthd::service::{self, LogFormat, Service, TestAlertError};
use healthd::{ProcessEnv, Settings};

/// Health checks for an application's dependencies, answered over HTTP.
///
/// With no command, healthd runs the service: it reads the config (or the
/// built-in default: listen on 127.0.0.1:8080, check the disk), runs the
/// checks and serves /health, the probes, /metrics, the contract and
/// Swagger UI until SIGTERM or SIGINT, which start the drain.
#[derive(Parser)]
#[command(name = "healthd", version, after_help = ENVIRONMENT)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigFile,
    /// How the service logs: readable text, or one JSON object per line.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, env = "HEALTHD_LOG_FORMAT")]
    log_format: LogFormat,
}

/// Read by healthd besides the options' own variables, shown in `--help`.
const ENVIRONMENT: &str = "\
Environment:
  HEALTHD_LISTEN   overrides server.listen (IP:PORT)
  RUST_LOG         filters the log (default: info)
  Checks and tokens name further variables for their secrets (url_env, headers_env, env).";

/// Where the config comes from: for the service, check-config and test-alert,
/// not for hash-token, which reads none.
#[derive(Args)]
struct ConfigFile {
    /// The config file (TOML); without one, the built-in default.
    #[arg(long, short, value_name = "FILE", env = "HEALTHD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config without running it: exit 0, or 2 with one line per
    /// problem (FILE: KEY: REASON).
    #[command(after_help = ENVIRONMENT)]
    CheckConfig {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Read a token on stdin and print its hex SHA-256, for the `sha256` of
    /// an [[access.tokens]] entry (the token itself never sits in the file).
    HashToken,
    /// Send one test notification through a receiver of the config: exit 0
    /// when it was delivered, 1 when the delivery failed, 2 when the config
    /// or the receiver's name is wrong.
    #[command(after_help = ENVIRONMENT)]
    TestAlert {
        /// The [[receivers]] entry to send through.
        #[arg(long, value_name = "NAME")]
        receiver: String,
        #[command(flatten)]
        config: ConfigFile,
    },
}

fn main() -> ExitCode {
    keep_large_blocks_mapped();
    // clap prints usage errors with exit code 2, help and version with 0.
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HashToken) => hash_token(),
        Some(Command::CheckConfig { config }) => {
            // `healthd --config F check-config` as well as `healthd check-config --config F`.
            check_config(config.config.or(cli.config.config).as_deref())
        }
        Some(Command::TestAlert { receiver, config }) => {
            test_alert(config.config.or(cli.config.config).as_deref(), &receiver)
        }
        None => serve(cli.config.config.as_deref(), cli.log_format),
    }
}

fn check_config(path: Option<&Path>) -> ExitCode {
    // As the service would: `server.max_connections` is checked against the raised limit.
    service::raise_open_files_limit();
    match Settings::load(path, &ProcessEnv) {
        Ok(settings) => {
            println!(
                "config OK: {} check(s), listening on {}",
                settings.check_names().len(),
                settings.listen()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}

/// The config as the service reads it, or exit code 2 with its problems
/// printed. The open files limit is raised first: `server.max_connections`
/// is checked against it.
fn load(path: Option<&Path>) -> Result<Settings, ExitCode> {
    service::raise_open_files_limit();
    Settings::load(path, &ProcessEnv).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(2)
    })
}

fn test_alert(path: Option<&Path>, receiver: &str) -> ExitCode {
    // As check-config: the config is read as the service would read it.
    let settings = match load(path) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("healthd: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service::send_test_alert(&settings, receiver)) {
        Ok(()) => {
            println!("sent to {receiver}");
            ExitCode::SUCCESS
        }
        Err(error @ TestAlertError::Delivery(_)) => {
            eprintln!("healthd: test-alert: {error}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("healthd: test-alert: {error}");
            ExitCode::from(2)
        }
    }
}

fn serve(path: Option<&Path>, log_format: LogFormat) -> ExitCode {
    let settings = match load(path) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    service::init_logging(log_format);
    let result = run(settings, path.map(Path::to_path_buf));
    if let Err(error) = &result {
        tracing::error!("{error:#}");
    }
    service::flush_logs();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("healthd: {error:#}");
            ExitCode::FAILURE
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
    let result = runtime.block_on(async {
        let mut application = Service::build(settings).await?;
        // SIGHUP reads the same file again.
        if let Some(file) = config_file {
            application = application.reload_from(file);
        }
        application.run_until_stopped().await
    });
    // A reload abandoned on a file that never answers may still hold a
    // blocking thread: the process exits without waiting for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
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
    println!("{}", service::token_digest(token));
    ExitCode::SUCCESS
}
