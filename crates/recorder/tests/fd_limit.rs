//! The open-file limit a recorder starts with: one file per call in progress stays open only
//! within it (the rest are reopened for each chunk), so `raise_fd_limit` lifts the soft limit to
//! the hard one and, where the process may (root: `CAP_SYS_RESOURCE`), the hard limit itself to
//! `WANT_OPEN_FILES`. A test binary of its own: it changes the whole process's limit.

use recorder::store::{WANT_OPEN_FILES, default_open_file_budget, raise_fd_limit};

fn limits() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct passed in.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

fn set(cur: u64, max: u64) {
    let lim = libc::rlimit { rlim_cur: cur as libc::rlim_t, rlim_max: max as libc::rlim_t };
    // SAFETY: setrlimit only reads the struct passed in.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0, "{}", std::io::Error::last_os_error());
}

/// Whether this process may raise its hard limit: the kernel's own answer, asked without
/// changing anything (setting the hard limit to what it is needs no privilege, above it does).
fn may_raise_hard() -> bool {
    let (cur, max) = limits();
    let lim = libc::rlimit { rlim_cur: cur as libc::rlim_t, rlim_max: (max + 1) as libc::rlim_t };
    // SAFETY: as in `set`.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0;
    if ok {
        set(cur, max);
    }
    ok
}

#[test]
fn the_soft_limit_rises_and_the_hard_one_too_where_the_process_may() {
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap().trim().parse().unwrap();
    let want = WANT_OPEN_FILES.min(nr_open);
    // As a recorder started under a low hard limit (the bench VM's was 20,000).
    set(1024, 4096);
    let privileged = may_raise_hard();
    let got = raise_fd_limit();
    let (cur, max) = limits();
    assert_eq!(got, cur, "returns the new soft limit");
    if privileged {
        assert_eq!((cur, max), (want, want), "root: both limits raised to the wanted number");
    } else {
        assert_eq!((cur, max), (4096, 4096), "unprivileged: the soft limit up to the hard one only");
    }
    assert_eq!(default_open_file_budget() as u64, cur - 256, "the budget follows the new limit");
}
