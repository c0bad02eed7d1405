//! The severity of statuses: pass, warn, fail, in that order. Reports pick their envelope by
//! it and `/metrics` writes it as the status's number.

use healthd_models::HealthStatus;

/// Every status, in order: `ALL[rank(s)] == s`.
pub const ALL: [HealthStatus; 3] = [HealthStatus::Pass, HealthStatus::Warn, HealthStatus::Fail];

/// 0 for pass, 1 for warn, 2 for fail.
pub fn rank(status: HealthStatus) -> u8 {
    match status {
        HealthStatus::Pass => 0,
        HealthStatus::Warn => 1,
        HealthStatus::Fail => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_index_the_list() {
        for status in ALL {
            assert_eq!(ALL[usize::from(rank(status))], status);
        }
    }
}
