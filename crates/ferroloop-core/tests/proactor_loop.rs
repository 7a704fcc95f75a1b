//! Integration tests of the proactor [`EventLoop`] (io_uring): the selector
//! loop's scenarios from tests/common run unchanged as `shared::<name>`, then
//! what only a proactor does: completion ops with closures, their
//! cancellation, and dropping a loop with ops in flight.
//!
//! Every test needs a working io_uring; where the kernel refuses one it says
//! why on stderr and passes without checking anything else.

#[macro_use]
mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use common::{log, new_loop, run, socketpair, Loop};
use ferroloop_core::proactor::{Op, SockAddr};
use ferroloop_core::{policy, BackendKind, EventLoop, LoopKind, ManualClock};

/// True if io_uring works here; otherwise says why.
fn available() -> bool {
    match ferroloop_core::proactor::probe() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

fn proactor() -> Option<Loop> {
    available().then(|| new_loop(LoopKind::Proactor))
}

// ------------------------------------------------------ shared scenarios --

macro_rules! on_proactor {
    ($($test:ident),* $(,)?) => {
        mod shared {
            $(#[test] fn $test() {
                if super::available() {
                    super::common::$test(ferroloop_core::LoopKind::Proactor);
                }
            })*
        }
    };
}

with_scenarios!(on_proactor);

// ------------------------------------------------------------- scheduling --

/// One script of call_soon / call_later / stop / nested scheduling and what
/// it logged, pass by pass.
fn scheduling_script(kind: LoopKind) -> Vec<String> {
    let mut lp = new_loop(kind);
    let l = log();
    let t0 = lp.time();
    for i in 0..3 {
        let l = l.clone();
        lp.call_soon(move |lp| {
            l.borrow_mut().push(format!("soon{i}"));
            let l2 = l.clone();
            lp.call_soon(move |_| l2.borrow_mut().push(format!("nested{i}")));
            if i == 1 {
                lp.stop();
            }
        });
    }
    for (d, tag) in [(0.1, "t100"), (0.0, "t0"), (0.05, "t50")] {
        let l = l.clone();
        lp.call_at(t0 + d, move |_| l.borrow_mut().push(tag.into()));
    }
    let doomed = {
        let l = l.clone();
        lp.call_soon(move |_| l.borrow_mut().push("cancelled".into()))
    };
    lp.cancel(&doomed);
    run(&mut lp, "first run");
    l.borrow_mut().push("|".into());
    lp.call_at(t0 + 0.15, |lp| lp.stop());
    run(&mut lp, "second run");
    let out = l.borrow().clone();
    out
}

/// The proactor loop runs callbacks in the same order as the selector loop.
#[test]
fn scheduling_order_matches_the_selector_loop() {
    if !available() {
        return;
    }
    let want = scheduling_script(LoopKind::Selector(BackendKind::Epoll));
    let got = scheduling_script(LoopKind::Proactor);
    assert_eq!(got, want);
    assert_eq!(&got[..3], ["soon0", "soon1", "soon2"], "{got:?}");
}

/// With a manual clock, timers run when the clock reaches them, not before.
#[test]
fn timers_follow_a_manual_clock() {
    if !available() {
        return;
    }
    let clock = ManualClock::new(50.0);
    let mut lp = EventLoop::with_proactor(64, clock.clone()).unwrap();
    assert_eq!(lp.kind(), LoopKind::Proactor);
    let hits = Rc::new(RefCell::new(Vec::new()));
    for when in [52.0, 51.0] {
        let h = hits.clone();
        lp.call_at(when, move |lp| h.borrow_mut().push(lp.time()));
    }
    // A ready callback each pass: the wait does not block on the manual
    // clock's deadlines in real time.
    let pass = |lp: &mut EventLoop<ManualClock>| {
        lp.call_soon(|_| {});
        lp.run_once().unwrap();
    };
    pass(&mut lp);
    assert!(hits.borrow().is_empty());
    clock.set(51.0);
    pass(&mut lp);
    assert_eq!(*hits.borrow(), [51.0]);
    clock.set(60.0);
    pass(&mut lp);
    assert_eq!(*hits.borrow(), [51.0, 60.0]);
}

/// A loop blocked with an op in flight (and nothing else to do) is woken by
/// another thread; the op stays in flight.
#[test]
fn remote_wakes_a_loop_waiting_on_an_op() {
    let Some(mut lp) = proactor() else { return };
    let (a, _b) = socketpair();
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    lp.submit(Op::recv(a.as_raw_fd(), 16), move |_, _| r.set(true))
        .unwrap();
    let remote = lp.remote();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        assert!(remote.call_soon_threadsafe(|lp| lp.stop()));
    });
    let start = Instant::now();
    run(&mut lp, "remote stop with a recv pending");
    assert!(start.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
    assert!(!ran.get());
    assert_eq!(lp.ops_in_flight(), 1);
    // The waker fired in the last wait and is queued to be armed again.
    let start = Instant::now();
    drop(lp);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(500), "drop took {took:?}");
}

// -------------------------------------------------------------------- ops --

fn listener() -> (TcpListener, SocketAddrV4) {
    let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
    let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
        unreachable!("bound to an IPv4 address")
    };
    (l, addr)
}

/// Echo what arrives on `fd` until the peer closes: recv, then send the
/// bytes back, then recv again, each step a closure.
fn echo(lp: &mut Loop, fd: RawFd, served: Rc<Cell<usize>>) {
    lp.submit(Op::recv(fd, 4096), move |lp, c| {
        let n = c.result.expect("recv");
        if n == 0 {
            return;
        }
        let Op::Recv { mut buf, .. } = c.op else {
            unreachable!("a recv comes back")
        };
        buf.truncate(n);
        served.set(served.get() + n);
        lp.submit(Op::send(fd, buf), move |lp, c| {
            assert_eq!(c.result.expect("send"), n);
            echo(lp, fd, served);
        })
        .unwrap();
    })
    .unwrap();
}

/// accept, recv and send with closures: a TCP client thread gets every
/// message echoed, and the loop stops when it says so.
#[test]
fn accept_recv_send_echo() {
    let Some(mut lp) = proactor() else { return };
    let (l, addr) = listener();
    let lfd = l.as_raw_fd();
    let served = Rc::new(Cell::new(0));
    let conn: Rc<RefCell<Option<OwnedFd>>> = Rc::new(RefCell::new(None));
    let (s, c) = (served.clone(), conn.clone());
    lp.submit(
        Op::Accept {
            fd: lfd,
            addr: SockAddr::empty(),
        },
        move |lp, done| {
            let fd = done.result.expect("accept") as RawFd;
            // SAFETY: accept returned a new descriptor that nobody else owns.
            *c.borrow_mut() = Some(unsafe { OwnedFd::from_raw_fd(fd) });
            let Op::Accept { addr, .. } = done.op else {
                unreachable!("an accept comes back")
            };
            assert_eq!(addr.storage.ss_family as i32, libc::AF_INET);
            echo(lp, fd, s);
        },
    )
    .unwrap();
    let remote = lp.remote();
    let client = thread::spawn(move || {
        let mut sock = TcpStream::connect(addr).unwrap();
        let mut total = 0;
        for i in 0..50 {
            let msg = format!("message {i}");
            sock.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0; msg.len()];
            sock.read_exact(&mut back).unwrap();
            assert_eq!(back, msg.as_bytes());
            total += msg.len();
        }
        remote.stop();
        total
    });
    run(&mut lp, "echo");
    let total = client.join().unwrap();
    assert_eq!(served.get(), total);
    assert!(conn.borrow().is_some());
}

/// What a completion callback saw: result, `cancelled`, buffer length.
type Outcome = (io::Result<usize>, bool, usize);

/// Cancelling a pending recv: its callback gets ECANCELED, `cancelled`, and
/// the buffer it was given.
#[test]
fn cancel_of_a_pending_recv_brings_the_buffer_back() {
    let Some(mut lp) = proactor() else { return };
    let (a, _b) = socketpair();
    let got: Rc<RefCell<Option<Outcome>>> = Rc::new(RefCell::new(None));
    let g = got.clone();
    let id = lp
        .submit(Op::recv(a.as_raw_fd(), 32), move |lp, c| {
            let Op::Recv { buf, .. } = c.op else {
                unreachable!("a recv comes back")
            };
            *g.borrow_mut() = Some((c.result, c.cancelled, buf.len()));
            lp.stop();
        })
        .unwrap();
    assert_eq!(lp.ops_in_flight(), 1);
    lp.call_later(0.02, move |lp| assert!(lp.cancel_op(id)));
    run(&mut lp, "cancelled recv");
    let (res, cancelled, len) = got.borrow_mut().take().expect("callback ran");
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
    assert!(cancelled);
    assert_eq!(len, 32);
    assert!(!lp.cancel_op(id), "no longer in flight");
    assert_eq!(lp.ops_in_flight(), 0);
}

/// Something dropped when the closure that owns it is.
struct Dropped(Rc<Cell<usize>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// Dropping a loop with ops in flight cancels them at once and drops their
/// callbacks unrun.
#[test]
fn dropping_a_loop_with_ops_in_flight_does_not_hang() {
    let Some(mut lp) = proactor() else { return };
    let (a, _b) = socketpair();
    let (l, _) = listener();
    let dropped = Rc::new(Cell::new(0));
    let ran = Rc::new(Cell::new(false));
    for op in [
        Op::recv(a.as_raw_fd(), 64),
        Op::Accept {
            fd: l.as_raw_fd(),
            addr: SockAddr::empty(),
        },
        Op::Poll {
            fd: a.as_raw_fd(),
            mask: libc::POLLIN as u32,
        },
    ] {
        let (d, r) = (Dropped(dropped.clone()), ran.clone());
        lp.submit(op, move |_, _| {
            let _keep = &d;
            r.set(true);
        })
        .unwrap();
    }
    // A reader that fires, so it is queued to be armed again at the drop.
    let (c, mut d) = socketpair();
    d.write_all(b"x").unwrap();
    let fired = Rc::new(Cell::new(0));
    let f = fired.clone();
    lp.add_reader(c.as_raw_fd(), move |_| f.set(f.get() + 1))
        .unwrap();
    // Hand them to the kernel.
    for _ in 0..2 {
        lp.call_soon(|_| {});
        lp.run_once().unwrap();
    }
    assert!(fired.get() >= 1);
    assert_eq!(lp.ops_in_flight(), 3);
    let remote = lp.remote();
    let start = Instant::now();
    drop(lp);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "drop took {:?}",
        start.elapsed()
    );
    assert_eq!(dropped.get(), 3, "callbacks dropped with the loop");
    assert!(!ran.get(), "no callback runs after the loop is gone");
    assert!(!remote.stop());
}

/// A selector loop refuses completion ops.
#[test]
fn a_selector_loop_refuses_ops() {
    let mut lp = EventLoop::new().unwrap();
    let (a, _b) = socketpair();
    let err = lp
        .submit(Op::recv(a.as_raw_fd(), 8), |_, _| unreachable!())
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    assert_eq!(lp.ops_in_flight(), 0);
    assert!(lp.proactor_features().is_none());
}

/// The policy makes proactor loops once told to.
#[test]
fn the_policy_makes_proactor_loops() {
    if !available() {
        return;
    }
    assert_eq!(policy::loop_kind(), LoopKind::best());
    policy::set_loop_kind(LoopKind::from_name("io_uring").unwrap());
    let lp = policy::new_event_loop();
    policy::set_loop_kind(LoopKind::best());
    let lp = lp.unwrap();
    assert_eq!(lp.borrow().kind(), LoopKind::Proactor);
    assert!(lp.borrow().proactor_features().is_some());
    assert_eq!(
        policy::new_event_loop().unwrap().borrow().kind(),
        LoopKind::best()
    );
}
