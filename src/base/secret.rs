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

/// A digest as the config writes it (`sha256` of a token, a heartbeat's
/// `ping_key_sha256`): 64 hex digits, either case.
pub fn parse_sha256_hex(hex: &str) -> Result<[u8; 32], String> {
    let invalid = || {
        "expected 64 hex digits (the SHA-256 of the token; `healthd hash-token` prints it)"
            .to_string()
    };
    if hex.len() != 64 {
        return Err(invalid());
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2).ok_or_else(invalid)?, 16)
            .map_err(|_| invalid())?;
    }
    Ok(digest)
}

/// Whether two digests are equal, in time that does not depend on where
/// they differ.
pub fn digests_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(difference) == 0
}
