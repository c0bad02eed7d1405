//! The descriptor budget: the process's limit of open files (RLIMIT_NOFILE),
//! split into a reserve for the checks' own connections and the process
//! itself, and a cap on client connections that takes the rest.
//!
//! Without a cap, idle clients can take every descriptor: the checks' own
//! connects then fail (`network error`) and the probes time out, although
//! every dependency is up. With it, clients past the cap wait in the
//! listen backlog (actix stops accepting) and the checks keep their share.

/// Descriptors the process holds whatever its checks: stdin, stdout and
/// stderr (3), the listener (1), the accept thread's poller and waker (2),
/// the main runtime's driver, waker and signal pipe (4), and files read
/// now and then (the config on SIGHUP, `/etc/resolv.conf` and `/etc/hosts`
/// for a name, TLS roots: 4), with as much again as slack. (A healthd
/// with no connections open holds 14 besides its workers'.)
pub const PROCESS_FIXED: u64 = 2 * (3 + 1 + 2 + 4 + 4);

/// Descriptors each actix worker holds: its runtime's poller and two
/// wakers, and its copy of the listener (4 each, as measured in
/// `/proc/PID/fd` with 2 and 8 workers).
pub const PER_WORKER: u64 = 4;

/// The largest cap healthd derives: actix's own default per worker.
pub const MAX_PER_WORKER: usize = 25_600;

/// What the process itself needs, for `workers` server workers.
pub fn process_margin(workers: usize) -> u64 {
    PROCESS_FIXED + PER_WORKER * workers as u64
}

/// How the limit of open files is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft RLIMIT_NOFILE the budget was made for.
    pub limit: u64,
    /// What the checks may hold at once (their pools, sockets, pipes).
    pub checks: u64,
    /// `checks` plus the process margin: never given to clients.
    pub reserve: u64,
    /// Client connections at most, over all workers: `per_worker * workers`.
    pub cap: usize,
    /// actix-web's `max_connections`, which is per worker.
    pub per_worker: usize,
    pub workers: usize,
    /// Whether the reserve does not fit under the limit: the cap is then a
    /// floor of one connection per worker, and the checks may still run short.
    pub overcommitted: bool,
}

impl Budget {
    /// The budget for `limit` open files, checks needing `checks`
    /// descriptors, `workers` server workers and the cap the config sets,
    /// if any. A cap set that leaves less than the reserve, or less than
    /// one connection per worker, is refused with the reason.
    pub fn plan(
        limit: u64,
        checks: u64,
        workers: usize,
        wanted: Option<usize>,
    ) -> Result<Budget, String> {
        let workers = workers.max(1);
        let reserve = checks.saturating_add(process_margin(workers));
        let available = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
        let (cap, overcommitted) = match wanted {
            Some(cap) if cap < workers => {
                return Err(format!(
                    "{cap} is less than one connection per worker ({workers} workers)"
                ))
            }
            Some(cap) if cap > available => {
                return Err(format!(
                    "{cap} leaves no reserve: of the {limit} open files allowed (RLIMIT_NOFILE), \
                     the checks need {checks} and the process {}, so at most {available} are \
                     left for clients",
                    process_margin(workers)
                ))
            }
            Some(cap) => (cap, false),
            None => (available.min(MAX_PER_WORKER * workers), available < workers),
        };
        // actix counts per worker: the total is rounded down to a multiple
        // of the workers, and is at least one each.
        let per_worker = (cap / workers).max(1);
        Ok(Budget {
            limit,
            checks,
            reserve,
            cap: per_worker * workers,
            per_worker,
            workers,
            overcommitted,
        })
    }

    /// The descriptors checks may hold under this cap: what the limit
    /// leaves after the clients and the process. A reload's new checks are
    /// held to it (the cap is set once, at start).
    pub fn room_for_checks(&self) -> u64 {
        self.limit.saturating_sub(self.cap as u64 + process_margin(self.workers))
    }
}

/// The soft and hard RLIMIT_NOFILE; `None` where they cannot be read.
pub fn open_files_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own; nothing else is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some((limit.rlim_cur, limit.rlim_max))
}

/// The soft limit of open files, as the budget reads it.
pub fn soft_open_files_limit() -> Option<u64> {
    open_files_limit().map(|(soft, _)| soft)
}

/// Raises the soft RLIMIT_NOFILE to the hard one. Returns the soft limit
/// before, and the soft limit now (the hard one, unless raising failed).
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    let (soft, hard) = open_files_limit()?;
    if soft >= hard {
        return Some((soft, soft));
    }
    let raised = libc::rlimit { rlim_cur: hard, rlim_max: hard };
    // SAFETY: setrlimit reads the struct we own; raising the soft limit up
    // to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Some((soft, soft));
    }
    Some((soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_cap_is_what_the_reserve_leaves_in_whole_workers() {
        // 256 files, 2 workers: the process keeps 28 + 2 × 4, a postgres
        // check with a pool of 2 (3) and a tcp check (1) keep 4.
        let budget = Budget::plan(256, 4, 2, None).unwrap();
        assert_eq!(process_margin(2), 36);
        assert_eq!(budget.reserve, 40);
        assert_eq!((budget.per_worker, budget.cap), (108, 216));
        assert!(budget.cap as u64 + budget.reserve <= budget.limit);
        assert!(!budget.overcommitted);
        assert_eq!(budget.room_for_checks(), 4);
        // An odd share is rounded down: 256 - 39 = 217 -> 108 each.
        assert_eq!(Budget::plan(256, 3, 2, None).unwrap().cap, 216);
    }

    #[test]
    fn a_set_cap_must_leave_the_reserve() {
        let budget = Budget::plan(256, 4, 1, Some(100)).unwrap();
        assert_eq!((budget.cap, budget.per_worker, budget.reserve), (100, 100, 36));
        // 256 - 36 = 220 is the most a cap may be.
        assert_eq!(Budget::plan(256, 4, 1, Some(220)).unwrap().cap, 220);
        let refused = Budget::plan(256, 4, 1, Some(221)).unwrap_err();
        assert!(refused.contains("leaves no reserve"), "{refused}");
        assert!(refused.contains("at most 220"), "{refused}");
        // Set caps are divided between the workers too: 101 over 2 is 50 each.
        let budget = Budget::plan(256, 4, 2, Some(101)).unwrap();
        assert_eq!((budget.cap, budget.per_worker), (100, 50));
        let refused = Budget::plan(256, 4, 4, Some(3)).unwrap_err();
        assert!(refused.contains("one connection per worker"), "{refused}");
    }

    #[test]
    fn checks_that_need_more_than_the_limit_leave_one_connection_per_worker() {
        let budget = Budget::plan(256, 1_000, 2, None).unwrap();
        assert_eq!((budget.cap, budget.per_worker), (2, 1));
        assert!(budget.overcommitted);
    }

    #[test]
    fn a_large_limit_is_capped_at_actix_s_default() {
        let budget = Budget::plan(u64::MAX, 10, 2, None).unwrap();
        assert_eq!(budget.cap, 2 * MAX_PER_WORKER);
    }
}
