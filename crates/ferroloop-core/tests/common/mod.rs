//! Scenarios every kind of [`EventLoop`] must pass alike, each a function
//! taking a [`LoopKind`]: tests/event_loop.rs runs them on each selector
//! backend, tests/proactor_loop.rs on the io_uring proactor.
//!
//! Every loop that runs `run_forever` gets a watchdog timer, so a callback that
//! never comes fails the test instead of hanging it.

/// Every scenario below, handed to the test file's instantiating macro
/// `$m` (one list, so a new scenario runs on every kind).
macro_rules! with_scenarios {
    ($m:ident) => {
        $m!(
            reader_add_remove,
            writer_fires,
            reader_and_writer_on_one_fd,
            replacing_reader_cancels_previous,
            replacing_reader_during_pass,
            remove_reader_in_pending_pass,
            remove_writer_in_pending_pass_same_fd,
            add_reader_bad_fd,
            timer_ordering,
            cancel_timer,
            remote_from_threads,
            remote_wakes_blocked_loop,
        );
    };
}

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ferroloop_core::event_loop::Handle;
use ferroloop_core::{BackendKind, EventLoop, LoopKind, MonotonicClock};

pub type Loop = EventLoop<MonotonicClock>;

pub fn new_loop(kind: LoopKind) -> Loop {
    let lp = EventLoop::with_kind(kind, MonotonicClock)
        .unwrap_or_else(|e| panic!("[{}] EventLoop::with_kind: {e}", kind.name()));
    assert_eq!(lp.kind(), kind);
    lp
}

/// A non-blocking AF_UNIX SOCK_STREAM socketpair.
pub fn socketpair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).expect("set_nonblocking");
    b.set_nonblocking(true).expect("set_nonblocking");
    (a, b)
}

/// Stop the loop after `secs` and note that it had to.
pub fn watchdog(lp: &mut Loop, secs: f64) -> (Rc<Cell<bool>>, Handle) {
    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    let h = lp.call_later(secs, move |lp| {
        f.set(true);
        lp.stop();
    });
    (fired, h)
}

/// Run until stopped; fail if the watchdog had to stop it.
pub fn run(lp: &mut Loop, what: &str) {
    let name = lp.kind().name();
    let (fired, h) = watchdog(lp, 10.0);
    lp.run_forever()
        .unwrap_or_else(|e| panic!("[{name}] {what}: run_forever: {e}"));
    assert!(
        !fired.get(),
        "[{name}] {what}: the watchdog stopped the loop"
    );
    lp.cancel(&h);
}

/// One pass that does not block (a ready callback makes the wait time zero).
pub fn pass(lp: &mut Loop) {
    lp.call_soon(|_| {});
    lp.run_once()
        .unwrap_or_else(|e| panic!("[{}] run_once: {e}", lp.kind().name()));
}

/// A descriptor number that is not open in this process, below `FD_SETSIZE`.
/// The descriptor table is grown past it first, or `select(2)` would ignore
/// it instead of failing with EBADF (see `closed_fd_number` in
/// tests/backends.rs for the details).
pub fn closed_fd_number() -> RawFd {
    let probe = UnixStream::pair().expect("socketpair").0;
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we keep open for the call.
    let high = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 1000) };
    assert!(high >= 1000, "F_DUPFD: {}", io::Error::last_os_error());
    // SAFETY: `high` was just created by fcntl and is owned by nobody else.
    drop(unsafe { OwnedFd::from_raw_fd(high) });
    for fd in (900..1000).rev() {
        // SAFETY: F_GETFD only queries the descriptor flags; an unused number yields EBADF.
        let rc = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EBADF) {
            return fd;
        }
    }
    panic!("no free descriptor number in 900..1000");
}

pub type Log = Rc<RefCell<Vec<String>>>;

pub fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

// ---------------------------------------------------------------- readers --

/// add_reader calls back on every pass while readable; remove_reader stops it
/// and the fd can be watched again afterwards.
pub fn reader_add_remove(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let (a, mut b) = socketpair();
    let fd = a.as_raw_fd();
    b.write_all(b"abc").unwrap();

    let hits = Rc::new(Cell::new(0));
    let h = hits.clone();
    lp.add_reader(fd, move |lp| {
        h.set(h.get() + 1);
        if h.get() == 3 {
            assert!(lp.remove_reader(fd).unwrap());
            lp.stop();
        }
    })
    .unwrap();
    run(&mut lp, "reader");
    assert_eq!(
        hits.get(),
        3,
        "[{name}] level-triggered reader, unread data"
    );

    for _ in 0..3 {
        pass(&mut lp);
    }
    assert_eq!(hits.get(), 3, "[{name}] removed reader ran again");
    assert!(
        !lp.remove_reader(fd).unwrap(),
        "[{name}] second remove_reader"
    );
    assert!(
        !lp.remove_writer(fd).unwrap(),
        "[{name}] remove_writer never added"
    );

    // Watch it again: the fd was deregistered cleanly.
    let again = Rc::new(Cell::new(false));
    let g = again.clone();
    let mut a2 = a.try_clone().unwrap();
    lp.add_reader(fd, move |lp| {
        let mut buf = [0u8; 16];
        assert_eq!(a2.read(&mut buf).unwrap(), 3);
        g.set(true);
        lp.remove_reader(fd).unwrap();
        lp.stop();
    })
    .unwrap();
    run(&mut lp, "reader added again");
    assert!(again.get(), "[{name}] reader added again");
}

/// add_writer fires on a fresh socket.
pub fn writer_fires(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let (mut a, mut b) = socketpair();
    let fd = a.as_raw_fd();
    let fired = Rc::new(Cell::new(0));
    let f = fired.clone();
    lp.add_writer(fd, move |lp| {
        f.set(f.get() + 1);
        a.write_all(b"ping").unwrap();
        assert!(lp.remove_writer(fd).unwrap());
        lp.stop();
    })
    .unwrap();
    run(&mut lp, "writer");
    assert_eq!(fired.get(), 1, "[{name}] writer");
    let mut buf = [0u8; 4];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    pass(&mut lp);
    assert_eq!(fired.get(), 1, "[{name}] removed writer ran again");
}

/// Reader and writer on one fd: removing one keeps the other.
pub fn reader_and_writer_on_one_fd(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let (a, mut b) = socketpair();
    let fd = a.as_raw_fd();
    let l = log();
    let (l1, l2) = (l.clone(), l.clone());
    lp.add_reader(fd, move |_| l1.borrow_mut().push("r".into()))
        .unwrap();
    lp.add_writer(fd, move |_| l2.borrow_mut().push("w".into()))
        .unwrap();
    pass(&mut lp);
    assert_eq!(*l.borrow(), ["w"], "[{name}] writable, not readable");
    b.write_all(b"x").unwrap();
    pass(&mut lp);
    assert_eq!(
        *l.borrow(),
        ["w", "r", "w"],
        "[{name}] readable and writable"
    );
    assert!(lp.remove_writer(fd).unwrap());
    l.borrow_mut().clear();
    pass(&mut lp);
    assert_eq!(
        *l.borrow(),
        ["r"],
        "[{name}] reader kept after remove_writer"
    );
    assert!(lp.remove_reader(fd).unwrap());
    pass(&mut lp);
    assert_eq!(*l.borrow(), ["r"], "[{name}] nothing after removing both");
}

/// add_reader on a watched fd replaces the callback; the old one never runs.
pub fn replacing_reader_cancels_previous(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let (a, mut b) = socketpair();
    let fd = a.as_raw_fd();
    let l = log();
    let l1 = l.clone();
    lp.add_reader(fd, move |_| l1.borrow_mut().push("old".into()))
        .unwrap();
    let l2 = l.clone();
    lp.add_reader(fd, move |lp| {
        l2.borrow_mut().push("new".into());
        lp.remove_reader(fd).unwrap();
        lp.stop();
    })
    .unwrap();
    b.write_all(b"x").unwrap();
    run(&mut lp, "replaced reader");
    assert_eq!(*l.borrow(), ["new"], "[{name}] replaced reader");
}

/// Two fds readable in the same pass; whichever callback runs first replaces
/// the other fd's reader. The other fd's old callback, already queued for
/// this pass, must not run; its new callback runs in the next pass.
pub fn replacing_reader_during_pass(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let (a1, mut b1) = socketpair();
    let (a2, mut b2) = socketpair();
    let fds = [a1.as_raw_fd(), a2.as_raw_fd()];
    b1.write_all(b"1").unwrap();
    b2.write_all(b"2").unwrap();
    let l = log();

    for me in 0..2 {
        let l = l.clone();
        let (my_fd, other_fd) = (fds[me], fds[1 - me]);
        lp.add_reader(my_fd, move |lp| {
            l.borrow_mut().push(format!("old{me}"));
            lp.remove_reader(my_fd).unwrap();
            let l = l.clone();
            lp.add_reader(other_fd, move |lp| {
                l.borrow_mut().push(format!("new{}", 1 - me));
                lp.remove_reader(other_fd).unwrap();
                lp.stop();
            })
            .unwrap();
            lp.stop();
        })
        .unwrap();
    }
    run(&mut lp, "first pass");
    let first = l.borrow().clone();
    assert_eq!(
        first.len(),
        1,
        "[{name}] one old callback per pass: {first:?}"
    );
    let other = if first[0] == "old0" { "new1" } else { "new0" };
    run(&mut lp, "second pass");
    assert_eq!(*l.borrow(), [first[0].as_str(), other], "[{name}]");
}

/// asyncio semantics: two fds readable in one pass, the first callback removes
/// the second's reader, and the second (already queued) must not run.
pub fn remove_reader_in_pending_pass(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let (a1, mut b1) = socketpair();
    let (a2, mut b2) = socketpair();
    let fds = [a1.as_raw_fd(), a2.as_raw_fd()];
    b1.write_all(b"1").unwrap();
    b2.write_all(b"2").unwrap();
    let l = log();
    for me in 0..2 {
        let l = l.clone();
        let (my_fd, other_fd) = (fds[me], fds[1 - me]);
        lp.add_reader(my_fd, move |lp| {
            l.borrow_mut().push(format!("r{me}"));
            assert!(lp.remove_reader(other_fd).unwrap());
            assert!(lp.remove_reader(my_fd).unwrap());
            lp.stop();
        })
        .unwrap();
    }
    run(&mut lp, "pass");
    assert_eq!(l.borrow().len(), 1, "[{name}] both ran: {:?}", l.borrow());
    for _ in 0..2 {
        pass(&mut lp);
    }
    assert_eq!(
        l.borrow().len(),
        1,
        "[{name}] ran after removal: {:?}",
        l.borrow()
    );
}

/// The same with a reader and a writer of one fd, both queued in one pass.
pub fn remove_writer_in_pending_pass_same_fd(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let (a, mut b) = socketpair();
    let fd = a.as_raw_fd();
    b.write_all(b"x").unwrap();
    let l = log();
    let (lr, lw) = (l.clone(), l.clone());
    lp.add_reader(fd, move |lp| {
        lr.borrow_mut().push("r".into());
        lp.remove_writer(fd).unwrap();
        lp.remove_reader(fd).unwrap();
        lp.stop();
    })
    .unwrap();
    lp.add_writer(fd, move |lp| {
        lw.borrow_mut().push("w".into());
        lp.remove_reader(fd).unwrap();
        lp.remove_writer(fd).unwrap();
        lp.stop();
    })
    .unwrap();
    run(&mut lp, "pass");
    assert_eq!(l.borrow().len(), 1, "[{name}] both ran: {:?}", l.borrow());
    pass(&mut lp);
    assert_eq!(
        l.borrow().len(),
        1,
        "[{name}] ran after removal: {:?}",
        l.borrow()
    );
}

/// Watching a bad descriptor. A negative fd is refused by every backend and
/// leaves nothing behind. A descriptor number that is not open: epoll refuses
/// it at once (EBADF) and leaves nothing behind; poll accepts it and reports
/// it (POLLNVAL) as readable, so the reader runs; select accepts it and the
/// next pass fails with EBADF; a proactor loop does as poll does (its poll
/// ops report POLLNVAL). After remove_reader every loop works again.
pub fn add_reader_bad_fd(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let err = lp.add_reader(-1, |_| {}).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::InvalidInput,
        "[{name}] add_reader(-1)"
    );
    assert!(!lp.remove_reader(-1).unwrap(), "[{name}] -1 left behind");
    pass(&mut lp);

    let fd = closed_fd_number();
    let hits = Rc::new(Cell::new(0));
    let h = hits.clone();
    let res = lp.add_reader(fd, move |_| h.set(h.get() + 1));
    match lp.backend() {
        BackendKind::Epoll => {
            let err = res.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EBADF), "[{name}] {err}");
            assert!(
                !lp.remove_reader(fd).unwrap(),
                "[{name}] fd {fd} left behind"
            );
        }
        BackendKind::Poll => {
            res.unwrap();
            pass(&mut lp);
            assert_eq!(hits.get(), 1, "[{name}] POLLNVAL reported as readable");
            assert!(lp.remove_reader(fd).unwrap());
        }
        BackendKind::Select => {
            res.unwrap();
            lp.call_soon(|_| {});
            let err = lp.run_once().unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EBADF), "[{name}] {err}");
            assert_eq!(hits.get(), 0);
            assert!(lp.remove_reader(fd).unwrap());
        }
    }
    pass(&mut lp);
    pass(&mut lp);
    assert!(hits.get() <= 1, "[{name}] removed reader ran");
}

// ----------------------------------------------------------------- timers --

/// Timers fire by deadline; equal deadlines fire in insertion order; never
/// before their deadline.
pub fn timer_ordering(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let l = log();
    let early = Rc::new(Cell::new(0));
    for (delay, tag) in [(0.03, "30"), (0.01, "10"), (0.02, "20")] {
        let (l, early) = (l.clone(), early.clone());
        let when = lp.time() + delay;
        lp.call_later(delay, move |lp| {
            if lp.time() + 1e-6 < when {
                early.set(early.get() + 1);
            }
            l.borrow_mut().push(tag.to_string());
        });
    }
    let t = lp.time() + 0.04;
    for i in 0..20 {
        let (l, early) = (l.clone(), early.clone());
        lp.call_at(t, move |lp| {
            if lp.time() + 1e-6 < t {
                early.set(early.get() + 1);
            }
            l.borrow_mut().push(format!("eq{i}"));
        });
    }
    lp.call_at(t, |lp| lp.stop());
    run(&mut lp, "timers");
    let mut want: Vec<String> = ["10", "20", "30"].iter().map(|s| s.to_string()).collect();
    want.extend((0..20).map(|i| format!("eq{i}")));
    assert_eq!(*l.borrow(), want, "[{name}] timer order");
    assert_eq!(
        early.get(),
        0,
        "[{name}] timers fired before their deadline"
    );
}

/// A cancelled timer never runs, whether cancelled before the loop runs or
/// by an earlier callback of the same pass.
pub fn cancel_timer(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let h = lp.call_later(0.01, move |_| r.set(true));
    assert!(!h.cancelled());
    assert!(h.when().is_some());
    lp.cancel(&h);
    lp.cancel(&h); // twice is harmless
    assert!(h.cancelled());

    // Two timers due in the same pass; the first cancels the second.
    let t = lp.time() + 0.02;
    let second: Rc<RefCell<Option<Handle>>> = Rc::new(RefCell::new(None));
    let s = second.clone();
    let first_ran = Rc::new(Cell::new(false));
    let f = first_ran.clone();
    lp.call_at(t, move |lp| {
        f.set(true);
        let h = s.borrow_mut().take().expect("second handle");
        lp.cancel(&h);
    });
    let r2 = ran.clone();
    *second.borrow_mut() = Some(lp.call_at(t, move |_| r2.set(true)));

    lp.call_later(0.05, |lp| lp.stop());
    run(&mut lp, "cancelled timers");
    assert!(first_ran.get(), "[{name}] first timer");
    assert!(!ran.get(), "[{name}] a cancelled timer ran");
}

// ----------------------------------------------------------------- remote --

/// 4 threads x 1000 call_soon_threadsafe: every call runs exactly once, each
/// thread's calls in the order it made them.
pub fn remote_from_threads(kind: LoopKind) {
    const THREADS: usize = 4;
    const CALLS: usize = 1000;
    let name = kind.name();
    let mut lp = new_loop(kind);
    let seen: Arc<Mutex<Vec<(usize, usize)>>> = Arc::new(Mutex::new(Vec::new()));

    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let remote = lp.remote();
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                for i in 0..CALLS {
                    let seen = Arc::clone(&seen);
                    assert!(remote.call_soon_threadsafe(move |_| {
                        seen.lock().unwrap().push((t, i));
                    }));
                    if i % 100 == 0 {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let remote = lp.remote();
    let stopper = thread::spawn(move || {
        for p in producers {
            p.join().unwrap();
        }
        // Queued after every producer's last call.
        assert!(remote.stop());
    });

    let (fired, _) = watchdog(&mut lp, 30.0);
    lp.run_forever().unwrap();
    stopper.join().unwrap();
    assert!(!fired.get(), "[{name}] the watchdog stopped the loop");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), THREADS * CALLS, "[{name}] calls that ran");
    let mut count = vec![0u32; THREADS * CALLS];
    let mut next = [0usize; THREADS];
    for &(t, i) in seen.iter() {
        count[t * CALLS + i] += 1;
        assert_eq!(i, next[t], "[{name}] thread {t}'s calls out of order");
        next[t] += 1;
    }
    assert!(
        count.iter().all(|&c| c == 1),
        "[{name}] a call ran twice or never"
    );
}

/// A loop blocked in a wait without a timeout (no timers, no readers) is
/// woken by call_soon_threadsafe. The watchdog timer (10 s) would end the
/// wait too, so the elapsed time tells them apart.
pub fn remote_wakes_blocked_loop(kind: LoopKind) {
    let name = kind.name();
    let mut lp = new_loop(kind);
    let remote = lp.remote();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        assert!(remote.call_soon_threadsafe(|lp| lp.stop()));
    });
    let start = Instant::now();
    run(&mut lp, "remote stop");
    let took = start.elapsed();
    t.join().unwrap();
    assert!(
        took < Duration::from_secs(5),
        "[{name}] not woken: {took:?}"
    );

    let remote = lp.remote();
    drop(lp);
    assert!(
        !remote.call_soon_threadsafe(|_| unreachable!()),
        "[{name}] call_soon_threadsafe after the loop was dropped"
    );
}
