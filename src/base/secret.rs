//! Secrets and where they come from: values that never reach a response
//! or a log line, the environment that holds them, and the digest tokens
//! are kept as.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};

/// A value that must never reach a response or a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where the environment can change the file's settings
/// (`HEALTHD_LISTEN`, variables a check names with `url_env`, tokens'
/// `env`): the process's ([`ProcessEnv`]), or a map in tests.
pub trait Environment {
    /// The variable's value, if it is set.
    fn var(&self, name: &str) -> Option<String>;

    /// The soft limit of open files (RLIMIT_NOFILE) a cap on client
    /// connections is checked against; `None` checks none.
    fn open_files_limit(&self) -> Option<u64> {
        None
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn open_files_limit(&self) -> Option<u64> {
        crate::base::budget::soft_open_files_limit()
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// The SHA-256 of a bearer token: what the config holds and what a
/// presented token is compared with.
#[inline]
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `sha256` as the 64 lowercase hex digits `healthd hash-token` prints.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha256(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}
