//! A TCP echo server and its client on one proactor loop (io_uring), every
//! step a completion op with a closure: the server accepts, then receives and
//! sends back; the client connects, sends N messages one at a time and checks
//! each reply, then closes, which ends the server's connection and the loop.
//!
//! Run with `cargo run -p ferroloop-core --example proactor_echo [N]`.
//! Where io_uring is unavailable it says why and exits 0.

use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use ferroloop_core::proactor::{Op, SockAddr, Unavailable};
use ferroloop_core::EventLoop;

/// What the run did, for the summary.
#[derive(Default)]
struct Stats {
    echoed_bytes: Cell<usize>,
    checked: Cell<usize>,
}

// ------------------------------------------------------------------ server

/// Receive on `fd`, send it back, again, until the peer closes.
fn serve(lp: &mut EventLoop, fd: RawFd, stats: Rc<Stats>) {
    lp.submit(Op::recv(fd, 4096), move |lp, c| match c.result {
        Ok(0) | Err(_) => {
            if let Err(e) = c.result {
                eprintln!("server: recv failed: {e}");
            }
            println!("server: peer closed, closing connection fd {fd}");
            close(lp, fd, |lp| lp.stop());
        }
        Ok(n) => {
            let Op::Recv { mut buf, .. } = c.op else {
                unreachable!("a recv comes back")
            };
            buf.truncate(n);
            lp.submit(Op::send(fd, buf), move |lp, c| {
                let sent = c.result.expect("server send");
                stats.echoed_bytes.set(stats.echoed_bytes.get() + sent);
                serve(lp, fd, stats);
            })
            .expect("a proactor loop takes ops");
        }
    })
    .expect("a proactor loop takes ops");
}

fn close(lp: &mut EventLoop, fd: RawFd, then: impl FnOnce(&mut EventLoop) + 'static) {
    lp.submit(Op::Close { fd }, move |lp, c| {
        if let Err(e) = c.result {
            eprintln!("close({fd}) failed: {e}");
        }
        then(lp);
    })
    .expect("a proactor loop takes ops");
}

// ------------------------------------------------------------------ client

fn message(i: usize) -> Vec<u8> {
    format!("message {i:04} from the client").into_bytes()
}

/// Send message `i` of `n`, read the reply whole, check it, go on.
fn client_step(lp: &mut EventLoop, fd: RawFd, i: usize, n: usize, stats: Rc<Stats>) {
    if i == n {
        println!("client: {n} replies checked, closing fd {fd}");
        close(lp, fd, |_| {});
        return;
    }
    let msg = message(i);
    lp.submit(Op::send(fd, msg.clone()), move |lp, c| {
        assert_eq!(c.result.expect("client send"), msg.len());
        read_reply(lp, fd, msg, Vec::new(), move |lp, reply| {
            assert_eq!(reply, message(i), "reply {i}");
            stats.checked.set(stats.checked.get() + 1);
            client_step(lp, fd, i + 1, n, stats);
        });
    })
    .expect("a proactor loop takes ops");
}

/// Receive until `got` is as long as `want` (TCP may split a reply).
fn read_reply(
    lp: &mut EventLoop,
    fd: RawFd,
    want: Vec<u8>,
    mut got: Vec<u8>,
    then: impl FnOnce(&mut EventLoop, Vec<u8>) + 'static,
) {
    lp.submit(Op::recv(fd, want.len() - got.len()), move |lp, c| {
        let n = c.result.expect("client recv");
        assert!(n > 0, "server closed early");
        let Op::Recv { buf, .. } = c.op else {
            unreachable!("a recv comes back")
        };
        got.extend_from_slice(&buf[..n]);
        if got.len() < want.len() {
            read_reply(lp, fd, want, got, then);
        } else {
            then(lp, got);
        }
    })
    .expect("a proactor loop takes ops");
}

fn sockaddr_bytes(addr: SocketAddrV4) -> Box<SockAddr> {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: views a live, plain-data sockaddr_in as its bytes.
    let raw = unsafe {
        std::slice::from_raw_parts(
            (&sin as *const libc::sockaddr_in).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr_in>(),
        )
    };
    SockAddr::from_bytes(raw).expect("a sockaddr_in fits")
}

fn main() -> io::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("N: {e}")))?,
        None => 100,
    };
    let mut lp = match EventLoop::proactor() {
        Ok(lp) => lp,
        Err(e) => {
            let why = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<Unavailable>());
            if let Some(u) = why {
                println!("{u}");
                println!("proactor_echo could not run: no usable io_uring here");
                return Ok(());
            }
            return Err(e);
        }
    };
    if let Some(f) = lp.proactor_features() {
        println!(
            "proactor loop: io_uring with {} submission entries, setup flags {:?}",
            f.sq_entries, f.setup_flags
        );
    }
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    let std::net::SocketAddr::V4(addr) = listener.local_addr()? else {
        unreachable!("bound to an IPv4 address")
    };
    println!("server: listening on {addr}");
    let stats = Rc::new(Stats::default());

    // Server: accept one connection and echo on it.
    let s = stats.clone();
    lp.submit(
        Op::Accept {
            fd: listener.as_raw_fd(),
            addr: SockAddr::empty(),
        },
        move |lp, c| {
            let fd = c.result.expect("accept") as RawFd;
            println!("server: accepted a connection, fd {fd}");
            serve(lp, fd, s);
        },
    )?;

    // Client: a socket of its own, connected by an op.
    let client = tcp_socket()?;
    let s = stats.clone();
    lp.submit(
        Op::Connect {
            fd: client,
            addr: sockaddr_bytes(addr),
        },
        move |lp, c| {
            c.result.expect("connect");
            println!("client: connected, fd {client}; sending {n} messages");
            client_step(lp, client, 0, n, s);
        },
    )?;

    let start = lp.time();
    lp.call_later(30.0, |_| panic!("the echo did not finish in 30 s"));
    lp.run_forever()?;
    let took = lp.time() - start;
    assert_eq!(stats.checked.get(), n);
    let want: usize = (0..n).map(|i| message(i).len()).sum();
    assert_eq!(stats.echoed_bytes.get(), want);
    println!(
        "done: {n} messages, {} bytes echoed and checked in {:.1} ms; {} ops left in flight",
        stats.echoed_bytes.get(),
        took * 1e3,
        lp.ops_in_flight()
    );
    Ok(())
}

/// A new TCP socket for the client, its descriptor handed over to the ops
/// (the client's Close op closes it).
fn tcp_socket() -> io::Result<RawFd> {
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
