//! The vocabulary every other layer speaks, importing nothing else of the
//! crate: a check's policy, config problems, secrets and the environment,
//! units as written in the config (durations, percentages, path prefixes),
//! the descriptor budget (`budget`),
//! CIDR ranges, files read safely, the check-name rule, the order of statuses (`severity`)
//! and crontab schedules in a time zone (`schedule`).

pub mod budget;
pub mod files;
pub mod name;
pub mod net;
pub mod policy;
pub mod problem;
pub mod schedule;
pub mod secret;
pub mod severity;
pub mod units;
