//! Integration tests of the three selector backends (epoll, poll, select) and
//! the waker. Every scenario is a plain function taking a [`BackendKind`]; the
//! `per_backend!` macro at the bottom instantiates it once per backend, as
//! `epoll::<name>`, `poll::<name>` and `select::<name>`.
//!
//! Tests run in parallel threads of one process, so a descriptor number is
//! never used after its descriptor was closed (another test may have been
//! given the same number), and "closed" descriptor numbers are taken from a
//! range far above what the tests open at once.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ferroloop_core::selector::Waiter;
use ferroloop_core::{BackendKind, Event, Interest, Selector, Waker};

/// How long a wait that is expected to find something ready may block. It
/// returns at once when the descriptor is ready; the limit only keeps a
/// broken backend from hanging the test run.
const READY: Option<f64> = Some(2.0);
/// A wait that must not block.
const NOW: Option<f64> = Some(0.0);

/// Serialises the tests that open hundreds of descriptors, so that the three
/// backends' copies never run at once (the select backend needs every
/// descriptor below `FD_SETSIZE`).
static MANY_FDS: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------- helpers --

fn new_selector(kind: BackendKind) -> Selector {
    let sel =
        Selector::new(kind).unwrap_or_else(|e| panic!("[{}] Selector::new: {e}", kind.name()));
    assert_eq!(sel.kind(), kind);
    assert!(sel.is_empty());
    sel
}

/// A non-blocking AF_UNIX SOCK_STREAM socketpair.
fn socketpair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).expect("set_nonblocking");
    b.set_nonblocking(true).expect("set_nonblocking");
    (a, b)
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> (File, File) {
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes; the result is checked.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (File::from(r), File::from(w))
}

/// One wait; panics (naming the backend) if it fails.
fn wait(sel: &mut Selector, timeout: Option<f64>) -> Vec<Event> {
    let mut evs = Vec::new();
    sel.select(&mut evs, timeout)
        .unwrap_or_else(|e| panic!("[{}] select({timeout:?}): {e}", sel.kind().name()));
    evs
}

fn ev(fd: RawFd, token: u64, readable: bool, writable: bool) -> Event {
    Event {
        fd,
        token,
        readable,
        writable,
    }
}

/// Assert that a wait reports exactly `expected`.
#[track_caller]
fn expect_events(sel: &mut Selector, timeout: Option<f64>, expected: &[Event], what: &str) {
    let mut got = wait(sel, timeout);
    got.sort_by_key(|e| e.fd);
    let mut want = expected.to_vec();
    want.sort_by_key(|e| e.fd);
    assert_eq!(got, want, "[{}] {what}", sel.kind().name());
}

#[track_caller]
fn expect_none(sel: &mut Selector, what: &str) {
    expect_events(sel, NOW, &[], what);
}

/// Read until the descriptor would block; returns the bytes read and whether
/// end of file was seen.
fn drain(r: &mut impl Read) -> (usize, bool) {
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (total, true),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (total, false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Write until the descriptor would block; returns the bytes written.
fn fill(w: &mut impl Write) -> usize {
    let buf = [0x5au8; 64 * 1024];
    let mut total = 0;
    loop {
        match w.write(&buf) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// A descriptor number that is not open in this process and stays below
/// `FD_SETSIZE`.
///
/// Nothing else is given such a number while the test uses it: the kernel
/// hands out the lowest free number and the tests never hold anywhere near 900
/// descriptors at once (the helper's own short-lived duplicate lands at 1000
/// or above).
///
/// The process's descriptor table is first grown past the number, by
/// duplicating a descriptor to 1000 or above and closing it again (the table
/// never shrinks). Without that, `select(2)` would not report EBADF for the
/// closed number: Linux clamps `nfds` to the table's current size, so a
/// number beyond it is silently ignored.
fn closed_fd_number() -> RawFd {
    let probe = Waker::new().expect("eventfd");
    drop(dup_at_least(probe.fd(), 1000).expect("grow the descriptor table to 1024"));
    for fd in (900..1000).rev() {
        // SAFETY: F_GETFD only queries the descriptor flags; an unused number yields EBADF.
        let rc = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EBADF) {
            return fd;
        }
    }
    panic!("no free descriptor number in 900..1000");
}

/// `fcntl(F_DUPFD_CLOEXEC)`: a duplicate of `fd` numbered at least `min`
/// (never clobbers an open descriptor, unlike dup2).
fn dup_at_least(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we keep open for the call.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn nofile_soft_limit() -> libc::rlim_t {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
    rl.rlim_cur
}

// ------------------------------------------------------------- readiness --

/// READ on one end of a socketpair: nothing before data, then a readable
/// event on every wait until the data is drained.
fn read_socketpair_level_triggered(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (mut a, mut b) = socketpair();
    let fd = a.as_raw_fd();
    sel.register(fd, Interest::READ, 11).unwrap();
    assert_eq!(sel.registration(fd), Some((Interest::READ, 11)));
    assert_eq!(sel.len(), 1);
    expect_none(&mut sel, "no event before data");

    b.write_all(b"hello").unwrap();
    let want = [ev(fd, 11, true, false)];
    for i in 0..3 {
        expect_events(&mut sel, READY, &want, &format!("readable, wait #{i}"));
    }
    // A partial read leaves it readable (level-triggered).
    let mut buf = [0u8; 2];
    a.read_exact(&mut buf).unwrap();
    expect_events(&mut sel, READY, &want, "still readable after partial read");
    assert_eq!(drain(&mut a), (3, false));
    expect_none(&mut sel, "drained");
    expect_none(&mut sel, "drained, second wait");
}

/// The same on the read end of a pipe.
fn read_pipe_level_triggered(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (mut r, mut w) = pipe();
    let fd = r.as_raw_fd();
    sel.register(fd, Interest::READ, 12).unwrap();
    expect_none(&mut sel, "no event before data");

    w.write_all(b"data").unwrap();
    let want = [ev(fd, 12, true, false)];
    for i in 0..3 {
        expect_events(&mut sel, READY, &want, &format!("readable, wait #{i}"));
    }
    assert_eq!(drain(&mut r), (4, false));
    expect_none(&mut sel, "drained");
}

/// WRITE on a fresh socket is ready at once; a full send buffer is not; it
/// is ready again once the peer drained it.
fn write_socket_full_then_drained(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (mut a, mut b) = socketpair();
    let fd = a.as_raw_fd();
    sel.register(fd, Interest::WRITE, 21).unwrap();
    let want = [ev(fd, 21, false, true)];
    expect_events(&mut sel, NOW, &want, "fresh socket is writable");
    expect_events(&mut sel, NOW, &want, "still writable (level-triggered)");

    let written = fill(&mut a);
    assert!(written > 0);
    expect_none(&mut sel, "full send buffer is not writable");

    let (read, eof) = drain(&mut b);
    assert_eq!((read, eof), (written, false));
    expect_events(
        &mut sel,
        READY,
        &want,
        "writable again after the peer drained",
    );
}

/// The same on a pipe's write end.
fn write_pipe_full_then_drained(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (mut r, mut w) = pipe();
    let fd = w.as_raw_fd();
    sel.register(fd, Interest::WRITE, 22).unwrap();
    let want = [ev(fd, 22, false, true)];
    expect_events(&mut sel, NOW, &want, "fresh pipe is writable");

    let written = fill(&mut w);
    assert!(written > 0);
    expect_none(&mut sel, "full pipe is not writable");

    assert_eq!(drain(&mut r), (written, false));
    expect_events(&mut sel, READY, &want, "writable again after draining");
}

/// BOTH reports each flag correctly; modify() changes what is reported (and
/// the token).
fn both_interest_and_modify(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (mut a, mut b) = socketpair();
    let fd = a.as_raw_fd();
    sel.register(fd, Interest::BOTH, 31).unwrap();
    expect_events(
        &mut sel,
        NOW,
        &[ev(fd, 31, false, true)],
        "BOTH, no data: writable only",
    );

    b.write_all(b"x").unwrap();
    expect_events(
        &mut sel,
        READY,
        &[ev(fd, 31, true, true)],
        "BOTH, data: both",
    );

    sel.modify(fd, Interest::WRITE, 32).unwrap();
    assert_eq!(sel.registration(fd), Some((Interest::WRITE, 32)));
    expect_events(
        &mut sel,
        NOW,
        &[ev(fd, 32, false, true)],
        "modified to WRITE",
    );

    sel.modify(fd, Interest::READ, 33).unwrap();
    assert_eq!(sel.registration(fd), Some((Interest::READ, 33)));
    expect_events(
        &mut sel,
        NOW,
        &[ev(fd, 33, true, false)],
        "modified to READ",
    );

    assert_eq!(drain(&mut a), (1, false));
    expect_none(&mut sel, "READ after draining");

    sel.modify(fd, Interest::BOTH, 34).unwrap();
    expect_events(
        &mut sel,
        NOW,
        &[ev(fd, 34, false, true)],
        "back to BOTH, drained",
    );
    assert_eq!(sel.len(), 1);

    let (c, _d) = socketpair();
    let err = sel.modify(c.as_raw_fd(), Interest::READ, 1).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::NotFound,
        "[{}] modify of unregistered fd",
        kind.name()
    );
}

// --------------------------------------------------------------- hang-up --

/// A READ registration on a socket whose peer closed reports readable (EOF),
/// on every wait.
fn hangup_socket_reads_eof(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (mut a, b) = socketpair();
    let fd = a.as_raw_fd();
    sel.register(fd, Interest::READ, 41).unwrap();
    expect_none(&mut sel, "peer still open");
    drop(b);
    let want = [ev(fd, 41, true, false)];
    expect_events(&mut sel, READY, &want, "peer closed: readable");
    assert_eq!(drain(&mut a), (0, true), "read gives EOF");
    expect_events(&mut sel, READY, &want, "EOF stays readable");
}

/// BOTH on a socket whose peer closed: readable (EOF) and writable (a write
/// would fail at once) on every backend.
fn hangup_socket_both(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (a, b) = socketpair();
    let fd = a.as_raw_fd();
    sel.register(fd, Interest::BOTH, 42).unwrap();
    drop(b);
    expect_events(
        &mut sel,
        READY,
        &[ev(fd, 42, true, true)],
        "peer closed, BOTH",
    );
}

/// The read end of a pipe whose write end closed reports readable (EOF).
fn hangup_pipe_read_end(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (mut r, mut w) = pipe();
    let fd = r.as_raw_fd();
    sel.register(fd, Interest::READ, 43).unwrap();
    w.write_all(b"last").unwrap();
    drop(w);
    let want = [ev(fd, 43, true, false)];
    expect_events(&mut sel, READY, &want, "data then hang-up: readable");
    assert_eq!(drain(&mut r), (4, true));
    expect_events(
        &mut sel,
        READY,
        &want,
        "hang-up after drain: still readable",
    );
}

/// A WRITE-only registration on a pipe write end whose read end closed
/// reports writable, and only writable (the error condition sets both flags,
/// masked by the interest). The pipe is filled first, so "writable" can only
/// come from the error condition, not from free space.
fn hangup_pipe_write_end(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (r, mut w) = pipe();
    let fd = w.as_raw_fd();
    sel.register(fd, Interest::WRITE, 44).unwrap();
    fill(&mut w);
    expect_none(&mut sel, "full pipe, reader open");
    drop(r);
    let want = [ev(fd, 44, false, true)];
    expect_events(&mut sel, READY, &want, "reader closed: writable (error)");
    expect_events(&mut sel, READY, &want, "reader closed: still writable");

    // With READ interest the same error condition is reported as readable.
    sel.modify(fd, Interest::READ, 45).unwrap();
    expect_events(
        &mut sel,
        READY,
        &[ev(fd, 45, true, false)],
        "READ on orphaned write end",
    );
    sel.modify(fd, Interest::BOTH, 46).unwrap();
    expect_events(
        &mut sel,
        READY,
        &[ev(fd, 46, true, true)],
        "BOTH on orphaned write end",
    );
}

// ---------------------------------------------------------- registration --

/// deregister() stops the events; deregistering again, or an fd that was
/// never registered, is NotFound.
fn deregister_stops_events(kind: BackendKind) {
    let name = kind.name();
    let mut sel = new_selector(kind);
    let (a, mut b) = socketpair();
    let (c, _d) = socketpair();
    let fd = a.as_raw_fd();
    sel.register(fd, Interest::BOTH, 51).unwrap();
    sel.register(c.as_raw_fd(), Interest::READ, 52).unwrap();
    b.write_all(b"x").unwrap();
    expect_events(
        &mut sel,
        READY,
        &[ev(fd, 51, true, true)],
        "before deregister",
    );

    sel.deregister(fd).unwrap();
    assert_eq!(sel.registration(fd), None);
    assert_eq!(sel.len(), 1);
    expect_none(&mut sel, "after deregister (data still pending)");

    let err = sel.deregister(fd).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::NotFound,
        "[{name}] second deregister"
    );
    let err = sel.deregister(closed_fd_number()).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::NotFound,
        "[{name}] deregister of unknown fd"
    );
    let err = sel.deregister(-1).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::NotFound,
        "[{name}] deregister(-1)"
    );

    // It can be registered again, and reports again.
    sel.register(fd, Interest::READ, 53).unwrap();
    expect_events(
        &mut sel,
        READY,
        &[ev(fd, 53, true, false)],
        "registered again",
    );
    sel.deregister(fd).unwrap();
    sel.deregister(c.as_raw_fd()).unwrap();
    assert!(sel.is_empty());
}

/// A second register() of the same fd is AlreadyExists and leaves the first
/// registration untouched; a negative fd is InvalidInput.
fn register_twice_and_negative(kind: BackendKind) {
    let name = kind.name();
    let mut sel = new_selector(kind);
    let (a, _b) = socketpair();
    let fd = a.as_raw_fd();
    sel.register(fd, Interest::WRITE, 61).unwrap();
    let err = sel.register(fd, Interest::READ, 62).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::AlreadyExists,
        "[{name}] register twice"
    );
    assert_eq!(sel.registration(fd), Some((Interest::WRITE, 61)));
    assert_eq!(sel.len(), 1);
    expect_events(
        &mut sel,
        NOW,
        &[ev(fd, 61, false, true)],
        "first registration kept",
    );

    let err = sel.register(-1, Interest::READ, 63).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::InvalidInput,
        "[{name}] register(-1)"
    );
    assert_eq!(sel.len(), 1);
}

/// register() of a descriptor number that is not open:
/// * epoll: epoll_ctl fails at once with EBADF, nothing is registered;
/// * poll: accepted; each wait reports POLLNVAL, which maps (like an error)
///   to both flags masked by the interest;
/// * select: accepted; the wait fails with EBADF and reports nothing.
///
/// In every case deregister() then succeeds and the selector works again.
fn register_closed_fd(kind: BackendKind) {
    let name = kind.name();
    let mut sel = new_selector(kind);
    let (a, _b) = socketpair();
    let live = a.as_raw_fd();
    sel.register(live, Interest::WRITE, 70).unwrap();
    let live_ev = ev(live, 70, false, true);

    let fd = closed_fd_number();
    let res = sel.register(fd, Interest::READ, 71);
    match kind {
        BackendKind::Epoll => {
            let err = res.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EBADF), "[{name}] {err}");
            assert_eq!(sel.registration(fd), None);
            assert_eq!(sel.len(), 1);
            expect_events(&mut sel, NOW, &[live_ev], "closed fd not registered");
            return;
        }
        BackendKind::Poll => {
            res.unwrap();
            let want = [live_ev, ev(fd, 71, true, false)];
            expect_events(&mut sel, NOW, &want, "POLLNVAL, READ interest");
            sel.modify(fd, Interest::WRITE, 72).unwrap();
            let want = [live_ev, ev(fd, 72, false, true)];
            expect_events(&mut sel, NOW, &want, "POLLNVAL, WRITE interest");
            sel.modify(fd, Interest::BOTH, 73).unwrap();
            let want = [live_ev, ev(fd, 73, true, true)];
            expect_events(&mut sel, NOW, &want, "POLLNVAL, BOTH interest");
        }
        BackendKind::Select => {
            res.unwrap();
            assert_eq!(sel.registration(fd), Some((Interest::READ, 71)));
            for _ in 0..2 {
                let mut evs = Vec::new();
                let err = sel.select(&mut evs, NOW).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EBADF), "[{name}] {err}");
                assert!(
                    evs.is_empty(),
                    "[{name}] events after a failed wait: {evs:?}"
                );
            }
        }
    }
    sel.deregister(fd).unwrap();
    assert_eq!(sel.len(), 1);
    expect_events(
        &mut sel,
        NOW,
        &[live_ev],
        "after deregistering the closed fd",
    );
}

/// Deregistering a descriptor that was closed while registered succeeds (the
/// epoll backend ignores the failing EPOLL_CTL_DEL).
fn deregister_after_close(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (a, _b) = socketpair();
    let fd = a.as_raw_fd();
    sel.register(fd, Interest::BOTH, 81).unwrap();
    drop(a);
    sel.deregister(fd)
        .unwrap_or_else(|e| panic!("[{}] deregister after close: {e}", kind.name()));
    assert!(sel.is_empty());
    expect_none(&mut sel, "nothing registered");
}

/// Closed while a duplicate keeps the file open: epoll still has the file in
/// its kernel set (and EPOLL_CTL_DEL on the closed number fails), yet after
/// deregister() nothing is reported for it on any backend.
fn deregister_after_close_with_live_dup(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (a, mut b) = socketpair();
    let fd = a.as_raw_fd();
    let dup = a.try_clone().unwrap();
    sel.register(fd, Interest::READ, 82).unwrap();
    drop(a);
    sel.deregister(fd).unwrap();
    b.write_all(b"x").unwrap();
    let evs = wait(&mut sel, Some(0.02));
    assert!(evs.is_empty(), "[{}] stale events: {evs:?}", kind.name());
    drop(dup);
}

// --------------------------------------------------------------- timeouts --

fn timeouts(kind: BackendKind) {
    let name = kind.name();
    let mut sel = new_selector(kind);
    let (a, _b) = socketpair();
    sel.register(a.as_raw_fd(), Interest::READ, 91).unwrap();

    for secs in [0.05, 0.0015, 0.02] {
        let start = Instant::now();
        let evs = wait(&mut sel, Some(secs));
        let took = start.elapsed();
        assert!(evs.is_empty(), "[{name}] {evs:?}");
        assert!(
            took >= Duration::from_secs_f64(secs),
            "[{name}] select(Some({secs})) returned early, after {took:?}"
        );
        assert!(
            took < Duration::from_secs(2),
            "[{name}] select(Some({secs})) took {took:?}"
        );
    }

    for secs in [0.0, -1.0] {
        let start = Instant::now();
        let evs = wait(&mut sel, Some(secs));
        let took = start.elapsed();
        assert!(evs.is_empty(), "[{name}] {evs:?}");
        assert!(
            took < Duration::from_millis(500),
            "[{name}] select(Some({secs})) took {took:?}"
        );
    }

    // An empty selector sleeps for the timeout too.
    sel.deregister(a.as_raw_fd()).unwrap();
    let start = Instant::now();
    let evs = wait(&mut sel, Some(0.02));
    let took = start.elapsed();
    assert!(evs.is_empty());
    assert!(
        took >= Duration::from_millis(20),
        "[{name}] empty selector: {took:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "[{name}] empty selector: {took:?}"
    );
}

// ---------------------------------------------------- high descriptors --

/// A descriptor numbered >= FD_SETSIZE (1024): the select backend refuses it
/// with InvalidInput; epoll and poll accept it and report it.
fn high_fd(kind: BackendKind) {
    const HIGH: RawFd = 1500;
    let name = kind.name();
    let limit = nofile_soft_limit();
    if limit <= HIGH as libc::rlim_t {
        println!("[{name}] skipped: RLIMIT_NOFILE soft limit {limit} does not allow fd {HIGH}");
        return;
    }
    let (a, mut b) = socketpair();
    let high = match dup_at_least(a.as_raw_fd(), HIGH) {
        Ok(fd) => fd,
        Err(e) => {
            println!("[{name}] skipped: cannot duplicate onto fd >= {HIGH}: {e}");
            return;
        }
    };
    let fd = high.as_raw_fd();
    assert!(fd >= HIGH && fd >= libc::FD_SETSIZE as RawFd);

    let mut sel = new_selector(kind);
    let res = sel.register(fd, Interest::READ, 101);
    if kind == BackendKind::Select {
        let err = res.unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::InvalidInput,
            "[{name}] fd {fd}: {err}"
        );
        assert!(sel.is_empty());
        assert_eq!(sel.registration(fd), None);
        // Below the limit is fine.
        sel.register(a.as_raw_fd(), Interest::READ, 102).unwrap();
        b.write_all(b"x").unwrap();
        expect_events(
            &mut sel,
            READY,
            &[ev(a.as_raw_fd(), 102, true, false)],
            "low fd",
        );
    } else {
        res.unwrap_or_else(|e| panic!("[{name}] register fd {fd}: {e}"));
        expect_none(&mut sel, "high fd, no data");
        b.write_all(b"x").unwrap();
        expect_events(
            &mut sel,
            READY,
            &[ev(fd, 101, true, false)],
            "high fd readable",
        );
        sel.deregister(fd).unwrap();
    }
}

// ------------------------------------------------ prepare / finish wait --

/// A descriptor deregistered between prepare_wait and finish_wait reports
/// nothing, even if the wait saw it ready; one modified meanwhile is
/// reported with its new token and interest.
fn deregister_during_wait_drops_event(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let (a1, mut b1) = socketpair();
    let (a2, mut b2) = socketpair();
    let (a3, mut b3) = socketpair();
    let (fd1, fd2, fd3) = (a1.as_raw_fd(), a2.as_raw_fd(), a3.as_raw_fd());
    sel.register(fd1, Interest::READ, 111).unwrap();
    sel.register(fd2, Interest::READ, 112).unwrap();
    sel.register(fd3, Interest::READ, 113).unwrap();
    for b in [&mut b1, &mut b2, &mut b3] {
        b.write_all(b"x").unwrap();
    }

    let mut w = sel.prepare_wait();
    w.wait(READY).unwrap();
    sel.deregister(fd1).unwrap();
    sel.modify(fd3, Interest::BOTH, 114).unwrap();
    let mut evs = Vec::new();
    sel.finish_wait(w, &mut evs);
    evs.sort_by_key(|e| e.fd);
    let mut want = vec![ev(fd2, 112, true, false), ev(fd3, 114, true, false)];
    want.sort_by_key(|e| e.fd);
    assert_eq!(evs, want, "[{}] finish_wait after deregister", kind.name());

    // Deregistered before the wait even started: same result.
    let mut w = sel.prepare_wait();
    sel.deregister(fd2).unwrap();
    w.wait(READY).unwrap();
    let mut evs = Vec::new();
    sel.finish_wait(w, &mut evs);
    assert!(
        evs.iter().all(|e| e.fd != fd1 && e.fd != fd2),
        "[{}] {evs:?}",
        kind.name()
    );
}

/// The waiter is Send: the wait may block on another thread. A descriptor
/// registered after prepare_wait is seen by that wait only on epoll (the
/// kernel set is live); poll and select see it from the next wait on.
fn waiter_on_another_thread(kind: BackendKind) {
    let name = kind.name();
    let mut sel = new_selector(kind);
    let (a, mut b) = socketpair();
    let (c, mut d) = socketpair();
    sel.register(a.as_raw_fd(), Interest::READ, 121).unwrap();
    b.write_all(b"x").unwrap();
    d.write_all(b"y").unwrap();

    let w = sel.prepare_wait();
    sel.register(c.as_raw_fd(), Interest::READ, 122).unwrap();
    let w: Waiter = thread::spawn(move || {
        let mut w = w;
        w.wait(READY).unwrap();
        w
    })
    .join()
    .unwrap();
    let mut evs = Vec::new();
    sel.finish_wait(w, &mut evs);
    evs.sort_by_key(|e| e.token);
    let mut want = vec![ev(a.as_raw_fd(), 121, true, false)];
    if kind == BackendKind::Epoll {
        want.push(ev(c.as_raw_fd(), 122, true, false));
    }
    assert_eq!(evs, want, "[{name}] registered after prepare_wait");

    let want = [
        ev(a.as_raw_fd(), 121, true, false),
        ev(c.as_raw_fd(), 122, true, false),
    ];
    expect_events(&mut sel, READY, &want, "next wait sees both");
}

// ------------------------------------------------------------- many fds --

fn many_fds(kind: BackendKind) {
    const N: usize = 200;
    let _serial = MANY_FDS.lock().unwrap_or_else(|p| p.into_inner());
    let name = kind.name();
    let mut sel = new_selector(kind);
    let mut pairs: Vec<(UnixStream, UnixStream)> = (0..N).map(|_| socketpair()).collect();
    for (i, (a, _)) in pairs.iter().enumerate() {
        sel.register(a.as_raw_fd(), Interest::READ, 1000 + i as u64)
            .unwrap_or_else(|e| panic!("[{name}] register #{i} (fd {}): {e}", a.as_raw_fd()));
    }
    assert_eq!(sel.len(), N);
    expect_none(&mut sel, "200 idle sockets");

    for (_, b) in pairs.iter_mut().step_by(3) {
        b.write_all(b"!").unwrap();
    }
    let want: Vec<Event> = pairs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(i, (a, _))| ev(a.as_raw_fd(), 1000 + i as u64, true, false))
        .collect();
    for round in 0..2 {
        let mut got = wait(&mut sel, READY);
        got.sort_by_key(|e| e.token);
        assert_eq!(
            got.len(),
            want.len(),
            "[{name}] round {round}: {} events",
            got.len()
        );
        assert_eq!(got, want, "[{name}] round {round}");
    }

    for (a, _) in pairs.iter_mut().step_by(3) {
        assert_eq!(drain(a), (1, false));
    }
    expect_none(&mut sel, "all drained");
    for (a, _) in &pairs {
        sel.deregister(a.as_raw_fd()).unwrap();
    }
    assert!(sel.is_empty());
}

// ----------------------------------------------------------------- waker --

/// A wake from another thread ends a wait without a timeout. The wait runs on
/// a helper thread so that a broken wake fails the test instead of hanging it.
fn waker_ends_blocking_wait(kind: BackendKind) {
    let name = kind.name();
    let waker = Arc::new(Waker::new().unwrap());
    let mut sel = new_selector(kind);
    let (a, _b) = socketpair();
    sel.register(a.as_raw_fd(), Interest::READ, 1).unwrap();
    sel.register(waker.fd(), Interest::READ, 2).unwrap();

    // A wake before the wait is not lost.
    waker.wake().unwrap();
    waker.wake().unwrap();
    expect_events(
        &mut sel,
        NOW,
        &[ev(waker.fd(), 2, true, false)],
        "woken before wait",
    );
    assert!(waker.drain());
    assert!(!waker.drain());
    expect_none(&mut sel, "drained waker");

    let (tx, rx) = mpsc::channel();
    let wfd = waker.fd();
    let waiter = thread::spawn(move || {
        let start = Instant::now();
        let mut evs = Vec::new();
        let res = sel.select(&mut evs, None);
        tx.send((res.map_err(|e| e.to_string()), evs, start.elapsed()))
            .unwrap();
        sel
    });
    thread::sleep(Duration::from_millis(50));
    waker.wake().unwrap();
    let (res, evs, took) = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("[{name}] wake did not end a select(None) within 10 s"));
    res.unwrap_or_else(|e| panic!("[{name}] select(None): {e}"));
    assert_eq!(
        evs,
        vec![ev(wfd, 2, true, false)],
        "[{name}] woken after {took:?}"
    );
    let mut sel = waiter.join().unwrap();
    assert!(waker.drain());
    expect_none(&mut sel, "drained after wake");
    drop(a);
}

// ----------------------------------------------------------- instantiate --

/// An edge registration on epoll reports a socket when data comes, not
/// again while it stays unread; `refresh` has the next wait report it if
/// still ready; `modify` keeps it edge-triggered; the peer's hang-up makes
/// it level-triggered until it is removed. The other backends ignore the
/// flag: level-triggered throughout.
fn edge_registration(kind: BackendKind) {
    let mut sel = new_selector(kind);
    let edge = sel.supports_oneshot();
    let (mut a, mut b) = socketpair();
    let fd = a.as_raw_fd();
    sel.register(fd, Interest::READ.edge(), 5).unwrap();
    expect_none(&mut sel, "no event before data");
    b.write_all(b"hello").unwrap();
    let want = [ev(fd, 5, true, false)];
    expect_events(&mut sel, READY, &want, "data came");
    if edge {
        expect_none(&mut sel, "unread, but no new edge");
        sel.refresh(fd).unwrap();
        expect_events(&mut sel, READY, &want, "refreshed while unread");
        expect_none(&mut sel, "after the refreshed report");
    } else {
        expect_events(&mut sel, READY, &want, "level-triggered: still readable");
    }
    sel.modify(fd, Interest::BOTH, 5).unwrap();
    let both = [ev(fd, 5, true, true)];
    expect_events(&mut sel, READY, &both, "modify re-polls");
    if edge {
        assert!(
            sel.registration(fd).unwrap().0.is_edge(),
            "modify kept the edge"
        );
        expect_none(&mut sel, "edge kept by modify");
    }
    sel.modify(fd, Interest::READ, 5).unwrap();
    assert_eq!(drain(&mut a), (5, false));
    expect_none(&mut sel, "drained");
    drop(b);
    let eof = [ev(fd, 5, true, false)];
    for i in 0..3 {
        expect_events(
            &mut sel,
            READY,
            &eof,
            &format!("hang-up reported, wait #{i}"),
        );
    }
    // Not watching reading any more: nothing to report, and the wait blocks.
    sel.modify(fd, Interest::WRITE, 5).unwrap();
    let before = Instant::now();
    let evs = wait(&mut sel, Some(0.05));
    assert!(evs.iter().all(|e| !e.readable), "[{}] {evs:?}", kind.name());
    if evs.is_empty() {
        assert!(
            before.elapsed() >= Duration::from_millis(40),
            "the wait blocked"
        );
    }
    sel.modify(fd, Interest::READ, 5).unwrap();
    expect_events(&mut sel, READY, &eof, "hang-up reported again");
    sel.deregister(fd).unwrap();
    expect_none(&mut sel, "deregistered");

    // The peer only shut down writing: readable at every wait while
    // reading is watched; watching writing alone, one report (room to
    // write) and then none; watching reading again, readable again.
    let (c, d) = socketpair();
    let fd = c.as_raw_fd();
    sel.register(fd, Interest::READ.edge(), 6).unwrap();
    d.shutdown(std::net::Shutdown::Write).unwrap();
    let end = [ev(fd, 6, true, false)];
    for i in 0..3 {
        expect_events(&mut sel, READY, &end, &format!("end of stream, wait #{i}"));
    }
    sel.modify(fd, Interest::WRITE, 6).unwrap();
    expect_events(&mut sel, READY, &[ev(fd, 6, false, true)], "room to write");
    if edge {
        expect_none(&mut sel, "writing alone, after its edge");
    }
    sel.modify(fd, Interest::READ, 6).unwrap();
    for i in 0..2 {
        expect_events(
            &mut sel,
            READY,
            &end,
            &format!("end of stream again, wait #{i}"),
        );
    }
    sel.deregister(fd).unwrap();
    expect_none(&mut sel, "deregistered");
    drop((c, d));
}

macro_rules! per_backend {
    ($($test:ident),* $(,)?) => {
        mod epoll {
            $(#[test] fn $test() { super::$test(ferroloop_core::BackendKind::Epoll); })*
        }
        mod poll {
            $(#[test] fn $test() { super::$test(ferroloop_core::BackendKind::Poll); })*
        }
        mod select {
            $(#[test] fn $test() { super::$test(ferroloop_core::BackendKind::Select); })*
        }
    };
}

per_backend!(
    read_socketpair_level_triggered,
    edge_registration,
    read_pipe_level_triggered,
    write_socket_full_then_drained,
    write_pipe_full_then_drained,
    both_interest_and_modify,
    hangup_socket_reads_eof,
    hangup_socket_both,
    hangup_pipe_read_end,
    hangup_pipe_write_end,
    deregister_stops_events,
    register_twice_and_negative,
    register_closed_fd,
    deregister_after_close,
    deregister_after_close_with_live_dup,
    timeouts,
    high_fd,
    deregister_during_wait_drops_event,
    waiter_on_another_thread,
    many_fds,
    waker_ends_blocking_wait,
);

#[test]
fn backend_names_round_trip() {
    for kind in [BackendKind::Epoll, BackendKind::Poll, BackendKind::Select] {
        assert_eq!(BackendKind::from_name(kind.name()), Some(kind));
        assert_eq!(new_selector(kind).kind(), kind);
    }
    assert_eq!(BackendKind::from_name("kqueue"), None);
    assert_eq!(BackendKind::best(), BackendKind::Epoll);
}

/// epoll's one-shot registrations: reported once, silent until re-armed,
/// and re-armed correctly after the number came to name another file
/// (with the old file alive elsewhere or not): the old file's registration
/// never reports, the new file's does. The new file is put at the number
/// with `dup2`, so no other test can be given it meanwhile.
#[test]
fn epoll_oneshot_rearm() {
    let mut sel = new_selector(BackendKind::Epoll);
    assert!(sel.supports_oneshot());
    assert!(!new_selector(BackendKind::Poll).supports_oneshot());
    for old_file_lives_on in [false, true] {
        let (mut a, mut b) = socketpair();
        let fd = a.as_raw_fd();
        let once = Interest::READ.oneshot();
        sel.register(fd, once, 7).unwrap();
        b.write_all(b"x").unwrap();
        expect_events(&mut sel, READY, &[ev(fd, 7, true, false)], "armed");
        expect_none(
            &mut sel,
            "fired once, then disarmed (the byte is still there)",
        );
        sel.rearm(fd, once, 7).unwrap();
        expect_events(&mut sel, READY, &[ev(fd, 7, true, false)], "re-armed");
        drain(&mut a);

        // The number now names another socket's file.
        let keep = old_file_lives_on.then(|| a.try_clone().unwrap());
        let (c, mut d) = socketpair();
        // SAFETY: both numbers are open and ours; dup2 replaces the file
        // at `fd` (a's, closed there) with c's, atomically.
        assert_eq!(unsafe { libc::dup2(c.as_raw_fd(), fd) }, fd);
        if keep.is_some() {
            b.write_all(b"old").unwrap();
        }
        expect_none(&mut sel, "the old file's registration is disarmed");
        sel.rearm(fd, once, 8).unwrap();
        expect_none(&mut sel, "the new file has nothing yet");
        d.write_all(b"new").unwrap();
        expect_events(
            &mut sel,
            READY,
            &[ev(fd, 8, true, false)],
            "the new file reports",
        );
        sel.deregister(fd).unwrap();
        drop(keep);
        // `a` owns the number, which now holds c's file: closing it
        // closes that duplicate only.
        drop(a);
    }
}
