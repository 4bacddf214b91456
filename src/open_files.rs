//! The open-file limit (`RLIMIT_NOFILE`). Every connection is a file
//! descriptor, and a process that has used them all cannot accept:
//! actix-server logs `Too many open files` and pauses accepting, so not even
//! a probe gets in. herald raises its soft limit to the hard one at start (a
//! soft limit of 1024 under a hard one of 20,000 or more is common), and
//! `connections.rs` keeps the sockets it holds within what is left beside
//! herald's own descriptors.

/// Descriptors herald holds besides connections. Measured: 16, plus 2 per
/// worker (stdio, the log, the listener, each runtime's epoll and wake-up
/// descriptors); twice that is kept free.
pub fn reserved(workers: usize) -> usize {
    32 + 4 * workers
}

/// Raises the soft limit to the hard one, and answers the soft limit then in
/// force: `None` when there is none (or it cannot be read).
pub fn raise_to_hard_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given. It fails
        // (and the soft limit stays) if the hard one is above what the
        // kernel allows, e.g. unlimited.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    (limit.rlim_cur != libc::RLIM_INFINITY)
        .then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}
