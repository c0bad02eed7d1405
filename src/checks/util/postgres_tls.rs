//! TLS for PostgreSQL connections as libpq's `sslmode` has it, shared by
//! the postgres kind and the PostgreSQL store: tokio-postgres reads
//! `disable`, `prefer` and `require`; `verify-ca` and `verify-full` are
//! spelled `require` for it, and the verification is ours (rustls).

use std::path::Path;

use deadpool_postgres::{Manager, ManagerConfig};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::checks::util::trust::{self, Verify};

/// The `sslmode` values libpq has and tokio-postgres does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    Ca,
    Full,
}

/// Finds `sslmode=verify-ca` or `verify-full` in a URL or key-value DSN and
/// spells it `require`, which tokio-postgres reads; verification is ours.
pub fn split_sslmode(dsn: &str) -> (String, Option<VerifyMode>) {
    let mut search = 0;
    while let Some(found) = dsn[search..].find("sslmode") {
        let key_end = search + found + "sslmode".len();
        let rest = &dsn[key_end..];
        let after_key = rest.len() - rest.trim_start().len();
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            search = key_end;
            continue;
        };
        let value_start = key_end + after_key + 1 + (value.len() - value.trim_start().len());
        let value = dsn[value_start..]
            .split(|c: char| c == '&' || c.is_whitespace())
            .next()
            .unwrap_or_default();
        let mode = match value {
            "verify-ca" => VerifyMode::Ca,
            "verify-full" => VerifyMode::Full,
            _ => {
                search = key_end;
                continue;
            }
        };
        let rewritten =
            format!("{}require{}", &dsn[..value_start], &dsn[value_start + value.len()..]);
        return (rewritten, Some(mode));
    }
    (dsn.to_string(), None)
}

/// How much to verify, as libpq: `require` with a CA file verifies the chain.
pub fn verify_for(asked: Option<VerifyMode>, has_ca_file: bool) -> Verify {
    match asked {
        Some(VerifyMode::Full) => Verify::Full,
        Some(VerifyMode::Ca) => Verify::Chain,
        None if has_ca_file => Verify::Chain,
        None => Verify::Nothing,
    }
}

/// A deadpool manager for `config`: plain with `sslmode=disable`, else
/// rustls verifying as `verify` says against `ca_file` (the system's roots
/// without one).
pub fn manager(
    config: tokio_postgres::Config,
    verify: Verify,
    ca_file: Option<&Path>,
    manager_config: ManagerConfig,
) -> anyhow::Result<Manager> {
    if config.get_ssl_mode() == SslMode::Disable {
        return Ok(Manager::from_config(config, NoTls, manager_config));
    }
    let roots = trust::roots(ca_file)?;
    let tls = MakeRustlsConnect::new(trust::client_config(verify, roots)?);
    Ok(Manager::from_config(config, tls, manager_config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_are_spelled_require_for_tokio_postgres() {
        assert_eq!(
            split_sslmode("postgres://h/db?sslmode=verify-full&connect_timeout=3"),
            ("postgres://h/db?sslmode=require&connect_timeout=3".into(), Some(VerifyMode::Full))
        );
        assert_eq!(
            split_sslmode("host=h sslmode = verify-ca dbname=x"),
            ("host=h sslmode = require dbname=x".into(), Some(VerifyMode::Ca))
        );
        assert_eq!(
            split_sslmode("postgres://h/db?sslmode=require"),
            ("postgres://h/db?sslmode=require".into(), None)
        );
        assert_eq!(split_sslmode("postgres://h/sslmode"), ("postgres://h/sslmode".into(), None));
    }
}
