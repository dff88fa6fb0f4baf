//! Thread priorities for live capture: which thread yields to which, ordered by how long each
//! can fall behind before something is lost.
//!
//! Why: on a machine whose cores are all busy, the scheduler shares them by weight, and a
//! runnable thread can wait tens of milliseconds for its turn. The AF_XDP reader can wait the
//! least: its socket holds 32,768 frames, 32 ms at 1 Mpps, and the kernel drops what does not
//! fit. Perf's scheduler trace of a losing 10,000-call live run on the 2-core rig found the reader
//! off its core 4.9 s of 6 s, nearly all of it runnable (preempted), in stretches of up to 36 ms,
//! while the workers' queues (1,024 batches each) and the writing thread's buffers (about a
//! second of audio) had room to spare. So the reader runs real-time ([`READER_RT_PRIORITY`],
//! capture's default since the seventeenth session) or [`READER_NICE`] from the process's nice
//! value, the threads that write recordings [`WRITER_NICE`] from it (see [`set_writer_nice`]),
//! the workers at it (relative, so `nice callrec capture` still works).
//!
//! The writing threads ran at +5 until the eighteenth session, as threads that only empty
//! buffers the workers can wait on. But a worker that finds all of them in use stops reading
//! packets until one comes back, and the inline worker is the reader: at 14,000 calls going on in
//! the live bench (2 cores, reader real-time) the seventeenth session's trace found five of the
//! inline worker's eight longest stalls waiting for those buffers (64 MiB in flight), and in
//! alternating runs the socket dropped frames in two of two with the writing thread at +5 (0.030
//! and 0.018 % lost), in none of two at the process's value and none of two at -5. At the
//! process's value it still fell behind in a later run (0.18 % lost, 1.46 s of waits), hence
//! [`WRITER_NICE`] (docs/BENCHMARKS.md, "The writing thread's priority").
//!
//! Behind a real-time reader that records inline the writing thread is real-time too, one
//! priority below the reader ([`WRITER_RT_PRIORITY`]) since the twenty-third session: at nice
//! -4 it still fell 64 MiB behind when calls started by thousands on 2 busy cores (the reader
//! waited for its buffers 37,000-145,000 times a run, 1.4-9.0 s); real-time, not once in three
//! alternating runs (docs/BENCHMARKS.md, "tcpdump beside it at 20,000 calls going on, and a
//! real-time writing thread").
//!
//! Measured (docs/BENCHMARKS.md, tenth session), 8,000-call live runs at the 2-core rig's edge:
//! lost 0.27 % in the median of 9 runs with these priorities (3 lossless) against 2.37 % in the
//! median of 7 without (none lossless); better in 5 of 7 adjacent pairs, worse in 2, so a
//! tendency at this VM's noise rather than a proof. They cure preemption, not a lack of cores:
//! when the cores cannot keep up (10,000 calls there, 41-44 % lost either way) the loss moves from
//! the socket's ring to the worker queues, as the eighth session found with the reader alone at
//! nice -10 (reverted then: it also left the workers less).

use std::io;

/// Capture's reader threads' real-time priority (`SCHED_FIFO`: one above the lowest there is,
/// which is its inline worker's writing thread's, [`WRITER_RT_PRIORITY`]), where the kernel
/// allows it; [`READER_NICE`] where it does not or the operator says so.
///
/// Why real-time: a nice value only weighs the reader's share against the threads around it;
/// it still waits its turn behind them. In the live bench at 12,000 calls going on on 2 cores
/// (docs/BENCHMARKS.md, seventeenth session) the inline reader at nice -5 lost 0.18-0.40 % of
/// the packets at its AF_XDP socket in stretches where it was off its core 13-17 ms at a time,
/// again and again, with no long stall of its own; moved to `SCHED_FIFO` 1 from outside
/// (`chrt -f -p 1`), the same build lost nothing and completed every call. A real-time thread
/// that never sleeps could starve its core, but the reader sleeps whenever its ring is empty,
/// waits for the writing thread's buffers when the disk is behind, and the kernel keeps 5 % of
/// every second for other threads (`sched_rt_runtime_us`). Threads it starts (the inline
/// worker's writing and sync threads) do not inherit the policy (`SCHED_RESET_ON_FORK`).
pub const READER_RT_PRIORITY: i32 = WRITER_RT_PRIORITY + 1;

/// The real-time priority of a writing thread started by a real-time thread (the inline worker
/// on a real-time reader): `SCHED_FIFO` at the lowest priority, below the reader, which holds the
/// shorter buffer, and ahead of every ordinary thread (the generator of the live bench, the
/// kernel's writeback workers, ...). A writing thread started by an ordinary thread (a worker of
/// the queued pipeline, `import`) runs at [`WRITER_NICE`] instead.
///
/// Why: at nice -4 the writing thread still waits for a core about 2.5 times as long as it runs
/// when the cores are busy (eighteenth session, `schedstat`), and with the calls of the live
/// bench at 20,000-24,000 going on on 2 cores it falls behind by all of its 64 MiB of buffers
/// again and again: the inline reader then stops to wait for one (up to 85 ms at once, 6.3 s in
/// a run that lost 1.5 %), and its socket drops frames (docs/BENCHMARKS.md, twenty-third
/// session). It needs a fifth of a core there and sleeps whenever its queue is empty, so it
/// cannot take a core for good.
pub const WRITER_RT_PRIORITY: i32 = 1;
// The reader preempts its writing thread, never the other way round.
const _: () = assert!(WRITER_RT_PRIORITY < READER_RT_PRIORITY);

/// Capture's reader threads' nice value, from the process's. Negative: needs CAP_SYS_NICE
/// (capture runs as root); without it the reader keeps the process's and capture says so.
pub const READER_NICE: i32 = -5;

/// A recorder's writing thread's nice value, from the process's: ahead of the workers, the
/// kernel's writeback workers and everything else at the process's value, one step behind a
/// reader at [`READER_NICE`] (where real-time is refused), which holds the shorter buffer.
///
/// Why: a worker that finds all the writing thread's buffers in use (64 MiB, about a second of
/// output) stops until one comes back, and the inline worker is the reader. In the live bench at
/// 14,000 calls going on (2 cores), with the writing thread at the process's value, the worker
/// waited for its buffers 1.46 s in one run that lost 0.18 % and 0.44 s (12,677 times) in one
/// that lost nothing; at -4, 46 ms (350 times) in the same kind of run. The writing thread still
/// waits for a core 2.5-2.7 times as long as it runs at either value (`schedstat`), but the long
/// stretches that empty its buffers are what the nice value cuts (docs/BENCHMARKS.md, "The
/// writing thread's priority").
pub const WRITER_NICE: i32 = READER_NICE + 1;

/// Moves the calling thread's nice value by `delta` (within -20..=19); returns the new value.
pub fn adjust_thread_nice(delta: i32) -> io::Result<i32> {
    let nice = (thread_nice()? + delta).clamp(-20, 19);
    set_thread_nice(nice)?;
    Ok(nice)
}

/// Sets the calling thread's nice value (on Linux a per-thread attribute).
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no preconditions; setpriority only reads its arguments.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Makes the calling thread a real-time thread: `SCHED_FIFO` at `priority`, with threads it
/// starts from now on back at `SCHED_OTHER` and a nice value of at least 0.
pub fn set_thread_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: gettid has no preconditions; sched_setscheduler only reads `param`.
    let r = unsafe { libc::sched_setscheduler(libc::gettid(), libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The calling thread's scheduling policy (`libc::SCHED_OTHER`, `libc::SCHED_FIFO`, ...), without
/// the reset-on-fork flag.
pub fn thread_policy() -> io::Result<i32> {
    // SAFETY: gettid has no preconditions; sched_getscheduler only reads its argument.
    let r = unsafe { libc::sched_getscheduler(libc::gettid()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r & !libc::SCHED_RESET_ON_FORK) }
}

/// The calling thread's nice value.
pub fn thread_nice() -> io::Result<i32> {
    // SAFETY: gettid has no preconditions.
    nice_of(unsafe { libc::gettid() })
}

/// The process's nice value: its main thread's, which `nice` and `renice PID` set.
pub fn process_nice() -> io::Result<i32> {
    // SAFETY: getpid has no preconditions.
    nice_of(unsafe { libc::getpid() })
}

fn nice_of(tid: libc::pid_t) -> io::Result<i32> {
    // getpriority returns the nice value, and -1 is a valid one: errno tells an error apart.
    // SAFETY: errno is thread-local; getpriority only reads its arguments.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        let e = io::Error::last_os_error();
        if n == -1 && e.raw_os_error().is_some_and(|c| c != 0) { Err(e) } else { Ok(n) }
    }
}

/// Where a recorder's writing thread runs: real-time at a priority, or at a nice value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterPlace {
    Realtime(i32),
    Nice(i32),
}

/// Puts the calling thread where a recorder's writing thread belongs: `SCHED_FIFO` at
/// [`WRITER_RT_PRIORITY`] if the thread that started it is real-time (`starter_realtime`) and the
/// kernel allows it, otherwise at [`WRITER_NICE`] from the process's value (see
/// [`set_writer_nice`]). Errors are those of the nice value: a refused real-time policy falls
/// back to it.
pub fn set_writer_priority(starter_realtime: bool) -> io::Result<WriterPlace> {
    if starter_realtime && set_thread_fifo(WRITER_RT_PRIORITY).is_ok() {
        return Ok(WriterPlace::Realtime(WRITER_RT_PRIORITY));
    }
    set_writer_nice().map(WriterPlace::Nice)
}

/// Puts the calling thread at [`WRITER_NICE`] from the process's nice value, whatever it
/// inherited from the thread that started it (a reader at nice -5, or a real-time one whose
/// children start at 0): a recorder's writing thread ([`crate::store::writeback`]). Lowering the
/// value needs CAP_SYS_NICE; without it the thread keeps what it has (returned as the error).
pub fn set_writer_nice() -> io::Result<i32> {
    let n = (process_nice()? + WRITER_NICE).clamp(-20, 19);
    if thread_nice()? != n {
        set_thread_nice(n)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raising a thread's nice value is always allowed and affects that thread only.
    #[test]
    fn a_thread_lowers_its_own_priority_only() {
        let before = thread_nice().unwrap();
        let inside = std::thread::spawn(|| {
            let start = thread_nice().unwrap();
            let set = adjust_thread_nice(5).unwrap();
            assert_eq!(set, thread_nice().unwrap());
            (start, set)
        })
        .join()
        .unwrap();
        assert_eq!(inside.1, (inside.0 + 5).min(19));
        assert_eq!(thread_nice().unwrap(), before, "the spawning thread keeps its value");
    }

    /// A real-time thread stays one alone: a thread it starts runs `SCHED_OTHER` again, at a
    /// nice value of its own to change. Where the kernel refuses (no CAP_SYS_NICE, or a cgroup
    /// without real-time time) it says so with an error and nothing changes.
    #[test]
    fn a_real_time_thread_starts_ordinary_threads() {
        let (set, policy, child) = std::thread::spawn(|| {
            let set = set_thread_fifo(READER_RT_PRIORITY);
            let policy = thread_policy().unwrap();
            let child = std::thread::spawn(|| (thread_policy().unwrap(), thread_nice().unwrap())).join().unwrap();
            (set, policy, child)
        })
        .join()
        .unwrap();
        match set {
            Ok(()) => {
                assert_eq!(policy, libc::SCHED_FIFO);
                assert_eq!(child.0, libc::SCHED_OTHER, "the policy was inherited");
                assert!(child.1 >= 0, "nice {} in the child", child.1);
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                assert_eq!(policy, libc::SCHED_OTHER);
            }
        }
        assert_eq!(thread_policy().unwrap(), libc::SCHED_OTHER, "the test's own thread is untouched");
    }

    /// A writing thread started by a thread that moved its own nice value ends at
    /// [`WRITER_NICE`] from the process's, down from a higher value and up from a lower one, as a
    /// real-time or nice -5 reader's would; the threads around it keep theirs.
    #[test]
    fn a_writing_thread_takes_its_place_from_the_process() {
        let process = process_nice().unwrap();
        let want = (process + WRITER_NICE).clamp(-20, 19);
        for delta in [5, -5] {
            let (moved, child) = std::thread::spawn(move || {
                let moved = adjust_thread_nice(delta);
                let child = std::thread::spawn(|| (set_writer_nice(), thread_nice().unwrap())).join().unwrap();
                (moved.map(|_| thread_nice().unwrap()), child)
            })
            .join()
            .unwrap();
            match moved {
                // Lowering refused (no CAP_SYS_NICE): nothing to compare the child against.
                Err(e) => assert!(refused(&e), "{e}"),
                Ok(parent) => {
                    assert_eq!(parent, (process + delta).clamp(-20, 19), "the parent keeps its value");
                    match child.0 {
                        Ok(n) => assert_eq!((n, child.1), (want, want), "delta {delta}"),
                        // Without CAP_SYS_NICE the child keeps what it inherited.
                        Err(e) => {
                            assert!(refused(&e), "delta {delta}: {e}");
                            assert_eq!(child.1, parent);
                        }
                    }
                }
            }
        }
        assert_eq!(process_nice().unwrap(), process);
    }

    /// A writing thread started by a real-time reader runs real-time one priority below it (the
    /// reader holds the shorter buffer); started by an ordinary thread, or where the kernel
    /// refuses real-time, at [`WRITER_NICE`] from the process's value.
    #[test]
    fn a_writing_thread_runs_real_time_below_a_real_time_reader() {
        let want_nice = (process_nice().unwrap() + WRITER_NICE).clamp(-20, 19);
        let (reader, place, policy, prio) = std::thread::spawn(|| {
            let reader = set_thread_fifo(READER_RT_PRIORITY);
            let realtime = thread_policy().unwrap() == libc::SCHED_FIFO;
            let child = std::thread::spawn(move || {
                (set_writer_priority(realtime), thread_policy().unwrap(), thread_rt_priority().unwrap())
            })
            .join()
            .unwrap();
            (reader, child.0, child.1, child.2)
        })
        .join()
        .unwrap();
        match reader {
            Ok(()) => {
                assert_eq!(place.unwrap(), WriterPlace::Realtime(WRITER_RT_PRIORITY));
                assert_eq!((policy, prio), (libc::SCHED_FIFO, WRITER_RT_PRIORITY));
            }
            Err(e) => {
                assert!(refused(&e), "{e}");
                assert_eq!(policy, libc::SCHED_OTHER);
                if let Ok(p) = place {
                    assert_eq!(p, WriterPlace::Nice(want_nice));
                }
            }
        }
        // An ordinary starter: never real-time.
        let (place, policy) =
            std::thread::spawn(|| (set_writer_priority(false), thread_policy().unwrap())).join().unwrap();
        assert_eq!(policy, libc::SCHED_OTHER);
        match place {
            Ok(p) => assert_eq!(p, WriterPlace::Nice(want_nice)),
            Err(e) => assert!(refused(&e), "{e}"),
        }
    }

    /// The calling thread's real-time priority (0 for an ordinary thread).
    fn thread_rt_priority() -> io::Result<i32> {
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: gettid has no preconditions; sched_getparam writes only `param`.
        let r = unsafe { libc::sched_getparam(libc::gettid(), &mut param) };
        if r == 0 { Ok(param.sched_priority) } else { Err(io::Error::last_os_error()) }
    }

    /// setpriority(2) refuses a lower nice value with EACCES, sched_setscheduler with EPERM.
    fn refused(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
    }
}
