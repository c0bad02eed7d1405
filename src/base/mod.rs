//! The vocabulary every other layer speaks, importing nothing else of the
//! crate: a check's policy, config problems, secrets and the environment,
//! units as written in the config (durations, percentages, path prefixes),
//! the descriptor budget (`budget`),
//! CIDR ranges, files read safely, the check-name rule and the order of statuses (`severity`).

pub mod budget;
pub mod files;
pub mod name;
pub mod net;
pub mod policy;
pub mod problem;
pub mod secret;
pub mod severity;
pub mod units;
