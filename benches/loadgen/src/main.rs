//! `ferroloop-loadgen`: the Rust load generator of `benches/net.py`.
//!
//! It does what net.py's Python client does for the echo, UDP and churn
//! workloads (`echo_one`, `echo_many`, `udp_many`, `churn_one`,
//! `churn_many`), with the same semantics, in a single thread: a blocking
//! socket for one connection, non-blocking sockets and epoll for many.
//!
//! Protocol with net.py (its `client_main` starts this binary):
//!
//! 1. open the connections (echo, UDP), run the warm-up count, print
//!    `{"phase":"warm","ops":N,"retransmits":R}` on stdout;
//! 2. wait for a line `go` on stdin (net.py reads the server's counters
//!    first);
//! 3. run the measured count, timed with `Instant` (CLOCK_MONOTONIC), print
//!    `{"phase":"done","ops":N,"wall_s":S,"retransmits":R}`;
//! 4. keep the connections open until stdin reaches EOF (net.py reads the
//!    server's counters again first, as the Python client closes its sockets
//!    only after that), then close them and exit 0.
//!
//! Any failure prints `{"phase":"error","error":"..."}` and exits 1.  The run
//! is bounded by the counts and by `--deadline-s` (net.py also kills this
//! process at its own deadline).

use std::collections::HashMap;
use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A datagram not answered within this time is sent again (`UDP_RETRANSMIT_S`).
const UDP_RETRANSMIT: Duration = Duration::from_millis(500);
/// How often unanswered datagrams are looked for (and the UDP poll timeout).
const UDP_SCAN: Duration = Duration::from_millis(100);
/// Poll timeout of the TCP loops: the deadline is checked at least this often.
const POLL: Duration = Duration::from_secs(1);
/// UDP datagrams start with a big-endian sequence number of this many bytes.
const SEQ_LEN: usize = 8;

// ---------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Echo,
    Udp,
    Churn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Inet(SocketAddrV4),
    Unix(PathBuf),
}

#[derive(Clone, Debug, PartialEq)]
struct Args {
    kind: Kind,
    target: Target,
    size: usize,
    clients: usize,
    warmup: u64,
    n: u64,
    deadline: Duration,
}

const USAGE: &str = "usage: ferroloop-loadgen --kind echo|udp|churn \
(--tcp 127.0.0.1:PORT | --unix PATH) --size BYTES --clients N --warmup N --n N --deadline-s S";

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut kind = None;
    let mut target = None;
    let (mut size, mut clients, mut warmup, mut n, mut deadline) = (None, None, None, None, None);
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a count: {value:?}"))
        };
        match flag.as_str() {
            "--kind" => {
                kind = Some(match value.as_str() {
                    "echo" => Kind::Echo,
                    "udp" => Kind::Udp,
                    "churn" => Kind::Churn,
                    _ => return Err(format!("unknown --kind {value:?}; {USAGE}")),
                })
            }
            "--tcp" => {
                let addr = value
                    .parse::<SocketAddrV4>()
                    .map_err(|_| format!("--tcp: not an IPv4 address:port: {value:?}"))?;
                target = Some(Target::Inet(addr));
            }
            "--unix" => target = Some(Target::Unix(PathBuf::from(value))),
            "--size" => size = Some(num()? as usize),
            "--clients" => clients = Some(num()? as usize),
            "--warmup" => warmup = Some(num()?),
            "--n" => n = Some(num()?),
            "--deadline-s" => {
                let secs = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--deadline-s: not a positive number: {value:?}"))?;
                deadline = Some(Duration::from_secs_f64(secs));
            }
            _ => return Err(format!("unknown option {flag:?}; {USAGE}")),
        }
    }
    let missing = |name: &str| format!("missing {name}; {USAGE}");
    let args = Args {
        kind: kind.ok_or_else(|| missing("--kind"))?,
        target: target.ok_or_else(|| missing("--tcp or --unix"))?,
        size: size.ok_or_else(|| missing("--size"))?,
        clients: clients.ok_or_else(|| missing("--clients"))?,
        warmup: warmup.ok_or_else(|| missing("--warmup"))?,
        n: n.ok_or_else(|| missing("--n"))?,
        deadline: deadline.ok_or_else(|| missing("--deadline-s"))?,
    };
    if args.size == 0 || args.clients == 0 {
        return Err("--size and --clients must be at least 1".into());
    }
    if args.kind == Kind::Udp {
        if args.size < SEQ_LEN {
            return Err(format!("udp datagrams need at least {SEQ_LEN} bytes"));
        }
        if !matches!(args.target, Target::Inet(_)) {
            return Err("udp needs --tcp HOST:PORT (the server's UDP address)".into());
        }
    }
    Ok(args)
}

// ---------------------------------------------------------------------------
// Payload, errors, deadline
// ---------------------------------------------------------------------------

/// net.py's `_payload(size)`: the bytes 0, 1, ..., 255 repeated.
fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| i as u8).collect()
}

fn fail(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Ok when the echo is byte for byte the message sent.
fn verify(got: &[u8], sent: &[u8]) -> io::Result<()> {
    if got == sent {
        return Ok(());
    }
    let at = got
        .iter()
        .zip(sent)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(sent.len()));
    Err(fail(format!(
        "echo mismatch at byte {at} of {} (got {} bytes)",
        sent.len(),
        got.len()
    )))
}

struct Deadline(Instant);

impl Deadline {
    fn check(&self) -> io::Result<()> {
        if Instant::now() > self.0 {
            return Err(fail("client deadline exceeded"));
        }
        Ok(())
    }

    /// Time left, for the timeouts of blocking sockets.
    fn left(&self) -> io::Result<Duration> {
        self.check()?;
        Ok(self
            .0
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)))
    }
}

/// A timeout on a blocking socket (SO_RCVTIMEO / SO_SNDTIMEO) is the deadline.
fn deadline_error(e: io::Error) -> io::Error {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => fail("client deadline exceeded"),
        _ => e,
    }
}

fn closed_error(e: io::Error, what: &str) -> io::Error {
    if e.kind() == ErrorKind::UnexpectedEof {
        fail(what)
    } else {
        deadline_error(e)
    }
}

// ---------------------------------------------------------------------------
// Sockets and epoll
// ---------------------------------------------------------------------------

/// A connected stream socket: TCP (with TCP_NODELAY) or Unix.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(target: &Target) -> io::Result<Stream> {
        match target {
            Target::Inet(addr) => {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Target::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path)?)),
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// Start a non-blocking TCP connect (for churn with many connections in flight).
fn connect_nonblocking(addr: &SocketAddrV4) -> io::Result<Stream> {
    // SAFETY: socket() takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns; OwnedFd closes it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let stream = TcpStream::from(owned);
    stream.set_nodelay(true)?;
    // SAFETY: sockaddr_in is plain data, for which all-zero bytes are valid.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from(*addr.ip()).to_be(),
    };
    // SAFETY: sa is a valid sockaddr_in that outlives the call, and the length
    // passed is its size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(fail(format!("connect failed: {e}")));
        }
    }
    Ok(Stream::Tcp(stream))
}

fn set_rcvbuf(fd: RawFd, bytes: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value points to a c_int that outlives the call, and
    // the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast::<libc::c_void>(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const ERR_HUP: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

/// A level-triggered epoll instance; events carry a u64 token.
struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: fd is a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.clamp(1, 1024)],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event that outlives the call (the
        // kernel copies it); fd is an open descriptor of the caller's.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Wait up to *timeout*; the (mask, token) pairs ready (none on EINTR).
    fn wait(&mut self, timeout: Duration) -> io::Result<Vec<(u32, u64)>> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        let max = self.events.len() as libc::c_int;
        // SAFETY: events holds `max` initialised epoll_event slots, which the
        // kernel may overwrite, and it is not otherwise borrowed meanwhile.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == ErrorKind::Interrupted {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
        Ok(self.events[..n as usize]
            .iter()
            .map(|ev| {
                let ev = *ev; // a copy: the struct is packed on x86_64
                (ev.events, ev.u64)
            })
            .collect())
    }
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

/// Outcome of one phase: messages (connections for churn) and retransmissions.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    ops: u64,
    retransmits: u64,
}

/// `echo_one`: blocking ping-pong over one connection.
fn echo_one(
    s: &mut Stream,
    msg: &[u8],
    buf: &mut [u8],
    count: u64,
    deadline: &Deadline,
) -> io::Result<u64> {
    s.set_timeouts(deadline.left()?)?;
    for _ in 0..count {
        s.write_all(msg).map_err(deadline_error)?;
        s.read_exact(buf)
            .map_err(|e| closed_error(e, "server closed the connection"))?;
        verify(buf, msg)?;
    }
    Ok(count)
}

/// Read what the non-blocking `s` has of the echo of `msg` into `buf`
/// (`got` bytes of it already in): true once the whole echo is in and
/// matches; an end of stream before that is the error `eof`.
fn read_echo(
    s: &mut Stream,
    buf: &mut [u8],
    got: &mut usize,
    msg: &[u8],
    eof: &str,
) -> io::Result<bool> {
    let k = match s.read(&mut buf[*got..]) {
        Ok(k) => k,
        Err(e) if is_would_block(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    if k == 0 {
        return Err(fail(eof));
    }
    *got += k;
    if *got < buf.len() {
        return Ok(false);
    }
    verify(buf, msg)?;
    Ok(true)
}

/// One connection of `echo_many`.
struct Conn {
    s: Stream,
    buf: Vec<u8>,
    got: usize,
    /// Bytes of the current message sent (== size when all sent).
    sent: usize,
}

impl Conn {
    fn new(s: Stream, size: usize) -> Conn {
        Conn {
            s,
            buf: vec![0; size],
            got: 0,
            sent: size,
        }
    }
}

/// `echo_many`: ping-pong on every connection at once, one message in flight
/// each; no new message is started once *total* have been.
fn echo_many(conns: &mut [Conn], msg: &[u8], total: u64, deadline: &Deadline) -> io::Result<u64> {
    let size = msg.len();
    let mut ep = Epoll::new(conns.len())?;
    for (i, c) in conns.iter().enumerate() {
        ep.add(c.s.as_raw_fd(), IN, i as u64)?;
    }
    let mut remaining = total;
    let mut done = 0;

    fn start(
        c: &mut Conn,
        i: usize,
        ep: &Epoll,
        msg: &[u8],
        remaining: &mut u64,
    ) -> io::Result<()> {
        *remaining -= 1;
        c.got = 0;
        c.sent = match c.s.write(msg) {
            Ok(k) => k,
            Err(e) if is_would_block(&e) => 0,
            Err(e) => return Err(e),
        };
        if c.sent < msg.len() {
            ep.modify(c.s.as_raw_fd(), IN | OUT, i as u64)?;
        }
        Ok(())
    }

    for (i, c) in conns.iter_mut().enumerate() {
        if remaining == 0 {
            break;
        }
        start(c, i, &ep, msg, &mut remaining)?;
    }
    while done < total {
        let events = ep.wait(POLL)?;
        deadline.check()?;
        for (mask, token) in events {
            let i = token as usize;
            let c = &mut conns[i];
            if mask & OUT != 0 && c.sent < size {
                match c.s.write(&msg[c.sent..]) {
                    Ok(k) => c.sent += k,
                    Err(e) if is_would_block(&e) => {}
                    Err(e) => return Err(e),
                }
                if c.sent == size {
                    ep.modify(c.s.as_raw_fd(), IN, token)?;
                }
            }
            if mask & IN != 0 {
                if read_echo(
                    &mut c.s,
                    &mut c.buf,
                    &mut c.got,
                    msg,
                    "server closed the connection",
                )? {
                    done += 1;
                    if remaining > 0 {
                        start(c, i, &ep, msg, &mut remaining)?;
                    }
                }
            } else if mask & ERR_HUP != 0 {
                return Err(fail("connection error"));
            }
        }
    }
    Ok(done)
}

/// One socket of `udp_many`; `seq` is 0 when nothing is in flight.
struct UdpConn {
    s: UdpSocket,
    seq: u64,
    sent_at: Instant,
}

/// `udp_many`: UDP ping-pong on every socket; lost datagrams are sent again
/// after UDP_RETRANSMIT, late duplicates are recognised by their sequence
/// number and ignored.  *seq* numbers datagrams across phases.
fn udp_many(
    conns: &mut [UdpConn],
    size: usize,
    total: u64,
    seq: &mut u64,
    deadline: &Deadline,
) -> io::Result<Outcome> {
    let mut dgram = payload(size); // first SEQ_LEN bytes: the sequence number
    let tail = dgram[SEQ_LEN..].to_vec();
    let mut rbuf = vec![0u8; size + 64];
    let mut ep = Epoll::new(conns.len())?;
    for (i, c) in conns.iter().enumerate() {
        ep.add(c.s.as_raw_fd(), IN, i as u64)?;
    }
    let mut remaining = total;
    let mut done = 0;
    let mut retransmits = 0;
    let mut last_scan = Instant::now();

    fn send(c: &mut UdpConn, dgram: &mut [u8]) -> io::Result<()> {
        dgram[..SEQ_LEN].copy_from_slice(&c.seq.to_be_bytes());
        c.s.send(dgram)?;
        c.sent_at = Instant::now();
        Ok(())
    }

    for c in conns.iter_mut() {
        if remaining == 0 {
            break;
        }
        remaining -= 1;
        *seq += 1;
        c.seq = *seq;
        send(c, &mut dgram)?;
    }
    while done < total {
        let events = ep.wait(UDP_SCAN)?;
        deadline.check()?;
        let idle = events.is_empty();
        for (_mask, token) in events {
            let c = &mut conns[token as usize];
            let k = match c.s.recv(&mut rbuf) {
                Ok(k) => k,
                Err(e) if is_would_block(&e) => continue,
                Err(e) => return Err(e),
            };
            if k != size || c.seq == 0 || rbuf[..SEQ_LEN] != c.seq.to_be_bytes() {
                continue; // a late duplicate of an earlier datagram
            }
            verify(&rbuf[SEQ_LEN..size], &tail)?;
            c.seq = 0;
            done += 1;
            if remaining > 0 {
                remaining -= 1;
                *seq += 1;
                c.seq = *seq;
                send(c, &mut dgram)?;
            }
        }
        let now = Instant::now();
        if idle || now.duration_since(last_scan) > UDP_SCAN {
            last_scan = now;
            for c in conns.iter_mut() {
                if c.seq != 0 && now.duration_since(c.sent_at) > UDP_RETRANSMIT {
                    retransmits += 1;
                    send(c, &mut dgram)?;
                }
            }
        }
    }
    Ok(Outcome {
        ops: done,
        retransmits,
    })
}

/// `churn_one`: sequential connections: connect, send one message, read the
/// echo, close.
fn churn_one(target: &Target, msg: &[u8], count: u64, deadline: &Deadline) -> io::Result<u64> {
    let mut buf = vec![0u8; msg.len()];
    for _ in 0..count {
        deadline.check()?;
        let mut s = Stream::connect(target)?;
        s.write_all(msg)?;
        s.read_exact(&mut buf)
            .map_err(|e| closed_error(e, "server closed the connection early"))?;
        verify(&buf, msg)?;
    }
    Ok(count)
}

/// One connection of `churn_many`.
struct ChurnConn {
    s: Stream,
    got: usize,
    buf: Vec<u8>,
    connected: bool,
}

/// `churn_many`: *width* connections in flight, each: connect, send one
/// message, read the echo, close.
fn churn_many(
    target: &Target,
    msg: &[u8],
    total: u64,
    width: usize,
    deadline: &Deadline,
) -> io::Result<u64> {
    let size = msg.len();
    let mut ep = Epoll::new(width)?;
    let mut live: HashMap<u64, ChurnConn> = HashMap::with_capacity(width);
    let mut next_token = 0u64;
    let mut remaining = total;
    let mut done = 0;

    fn start(
        target: &Target,
        size: usize,
        ep: &Epoll,
        live: &mut HashMap<u64, ChurnConn>,
        next_token: &mut u64,
    ) -> io::Result<()> {
        let s = match target {
            Target::Inet(addr) => connect_nonblocking(addr)?,
            Target::Unix(_) => {
                let s = Stream::connect(target)?; // immediate for a Unix socket
                s.set_nonblocking(true)?;
                s
            }
        };
        *next_token += 1;
        ep.add(s.as_raw_fd(), OUT, *next_token)?;
        let conn = ChurnConn {
            s,
            got: 0,
            buf: vec![0; size],
            connected: false,
        };
        live.insert(*next_token, conn);
        Ok(())
    }

    for _ in 0..(width as u64).min(total) {
        remaining -= 1;
        start(target, size, &ep, &mut live, &mut next_token)?;
    }
    while done < total {
        let events = ep.wait(POLL)?;
        deadline.check()?;
        for (_mask, token) in events {
            let Some(c) = live.get_mut(&token) else {
                continue;
            };
            if !c.connected {
                if let Some(e) = c.s.take_error()? {
                    return Err(fail(format!("connect failed: {e}")));
                }
                c.connected = true;
                let k = c.s.write(msg)?;
                if k != size {
                    return Err(fail(format!(
                        "short send on a new connection: {k} of {size}"
                    )));
                }
                ep.modify(c.s.as_raw_fd(), IN, token)?;
                continue;
            }
            let eof = "server closed the connection early";
            if read_echo(&mut c.s, &mut c.buf, &mut c.got, msg, eof)? {
                ep.delete(c.s.as_raw_fd())?;
                live.remove(&token); // closes the socket
                done += 1;
                if remaining > 0 {
                    remaining -= 1;
                    start(target, size, &ep, &mut live, &mut next_token)?;
                }
            }
        }
    }
    Ok(done)
}

// ---------------------------------------------------------------------------
// The generator: connections kept across the warm-up and measured phases
// ---------------------------------------------------------------------------

enum State {
    EchoOne(Stream, Vec<u8>),
    EchoMany(Vec<Conn>),
    Udp(Vec<UdpConn>, u64),
    Churn,
}

struct Generator {
    args: Args,
    msg: Vec<u8>,
    state: State,
    deadline: Deadline,
}

impl Generator {
    /// Open the connections (not for churn: each message opens its own).
    fn open(args: Args) -> io::Result<Generator> {
        let deadline = Deadline(Instant::now() + args.deadline);
        let state = match (&args.kind, &args.target) {
            (Kind::Echo, target) if args.clients == 1 => {
                State::EchoOne(Stream::connect(target)?, vec![0; args.size])
            }
            (Kind::Echo, target) => {
                let mut conns = Vec::with_capacity(args.clients);
                for _ in 0..args.clients {
                    let s = Stream::connect(target)?;
                    s.set_nonblocking(true)?;
                    conns.push(Conn::new(s, args.size));
                }
                State::EchoMany(conns)
            }
            (Kind::Udp, Target::Inet(addr)) => {
                let mut conns = Vec::with_capacity(args.clients);
                for _ in 0..args.clients {
                    let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
                    set_rcvbuf(s.as_raw_fd(), 1 << 20)?;
                    s.connect(addr)?;
                    s.set_nonblocking(true)?;
                    conns.push(UdpConn {
                        s,
                        seq: 0,
                        sent_at: Instant::now(),
                    });
                }
                State::Udp(conns, 0)
            }
            (Kind::Udp, Target::Unix(_)) => return Err(fail("udp needs an IPv4 address")),
            (Kind::Churn, _) => State::Churn,
        };
        Ok(Generator {
            msg: payload(args.size),
            args,
            state,
            deadline,
        })
    }

    fn phase(&mut self, n: u64) -> io::Result<Outcome> {
        let d = &self.deadline;
        let msg = &self.msg;
        let ops = match &mut self.state {
            State::EchoOne(s, buf) => echo_one(s, msg, buf, n, d)?,
            State::EchoMany(conns) => echo_many(conns, msg, n, d)?,
            State::Udp(conns, seq) => return udp_many(conns, self.args.size, n, seq, d),
            State::Churn if self.args.clients == 1 => churn_one(&self.args.target, msg, n, d)?,
            State::Churn => churn_many(&self.args.target, msg, n, self.args.clients, d)?,
        };
        Ok(Outcome {
            ops,
            retransmits: 0,
        })
    }
}

// ---------------------------------------------------------------------------
// Protocol with net.py
// ---------------------------------------------------------------------------

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn emit(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

fn run(args: Args) -> io::Result<()> {
    let warmup = args.warmup;
    let n = args.n;
    let mut gen = Generator::open(args)?;
    let warm = gen.phase(warmup)?;
    emit(&format!(
        r#"{{"phase":"warm","ops":{},"retransmits":{}}}"#,
        warm.ops, warm.retransmits
    ))?;
    let mut stdin = io::stdin().lock();
    let mut line = String::new();
    if stdin.read_line(&mut line)? == 0 {
        return Err(fail("stdin closed before 'go'"));
    }
    if line.trim() != "go" {
        return Err(fail(format!(
            "expected 'go' on stdin, got {:?}",
            line.trim()
        )));
    }
    let t0 = Instant::now();
    let done = gen.phase(n)?;
    let wall = t0.elapsed();
    emit(&format!(
        r#"{{"phase":"done","ops":{},"wall_s":{:.9},"retransmits":{}}}"#,
        done.ops,
        wall.as_secs_f64(),
        done.retransmits
    ))?;
    // Keep the connections open until net.py has read the server's counters.
    let mut rest = Vec::new();
    stdin.read_to_end(&mut rest)?;
    drop(gen);
    Ok(())
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&argv).map_err(fail).and_then(run);
    if let Err(e) = result {
        let text = format!("ferroloop-loadgen: {e}");
        eprintln!("{text}");
        let _ = emit(&format!(
            r#"{{"phase":"error","error":{}}}"#,
            json_string(&text)
        ));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    fn args(list: &str) -> Result<Args, String> {
        let argv: Vec<String> = list.split_whitespace().map(String::from).collect();
        parse_args(&argv)
    }

    #[test]
    fn payload_is_net_py_pattern() {
        let p = payload(600);
        assert_eq!(p.len(), 600);
        assert_eq!(&p[..3], &[0, 1, 2]);
        assert_eq!(p[255], 255);
        assert_eq!(p[256], 0);
        assert_eq!(p[599], (599 % 256) as u8);
    }

    #[test]
    fn verify_catches_one_corrupted_byte() {
        let sent = payload(1024);
        let mut got = sent.clone();
        assert!(verify(&got, &sent).is_ok());
        got[700] ^= 0x01;
        let e = verify(&got, &sent).unwrap_err();
        assert!(e.to_string().contains("byte 700"), "{e}");
        assert!(verify(&sent[..1023], &sent).is_err());
    }

    #[test]
    fn parses_arguments() {
        let a = args("--kind echo --tcp 127.0.0.1:4000 --size 1024 --clients 50 --warmup 5 --n 100 --deadline-s 2.5").unwrap();
        assert_eq!(a.kind, Kind::Echo);
        assert_eq!(a.target, Target::Inet("127.0.0.1:4000".parse().unwrap()));
        assert_eq!((a.size, a.clients, a.warmup, a.n), (1024, 50, 5, 100));
        assert_eq!(a.deadline, Duration::from_millis(2500));
        let u = args(
            "--kind churn --unix /tmp/x.sock --size 64 --clients 1 --warmup 0 --n 1 --deadline-s 1",
        )
        .unwrap();
        assert_eq!(u.target, Target::Unix("/tmp/x.sock".into()));
        assert!(
            args("--kind echo --tcp 127.0.0.1:1 --size 1 --clients 1 --warmup 1 --n 1").is_err()
        );
        assert!(
            args("--kind udp --unix /x --size 64 --clients 1 --warmup 1 --n 1 --deadline-s 1")
                .is_err()
        );
        assert!(args(
            "--kind udp --tcp 127.0.0.1:1 --size 4 --clients 1 --warmup 1 --n 1 --deadline-s 1"
        )
        .is_err());
        assert!(args(
            "--kind tls --tcp 127.0.0.1:1 --size 4 --clients 1 --warmup 1 --n 1 --deadline-s 1"
        )
        .is_err());
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
    }

    /// A thread-per-connection TCP echo server; *corrupt* flips one bit of
    /// the 3rd echo on every connection.
    fn echo_server(corrupt: bool) -> SocketAddrV4 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = match listener.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut total = 0usize;
                    loop {
                        let k = match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => k,
                        };
                        if corrupt && total <= 2048 && total + k > 2048 {
                            buf[2048 - total] ^= 0x80;
                        }
                        total += k;
                        if conn.write_all(&buf[..k]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn generator(kind: &str, addr: SocketAddrV4, size: usize, clients: usize) -> Generator {
        let a = args(&format!(
            "--kind {kind} --tcp {addr} --size {size} --clients {clients} --warmup 1 --n 1 --deadline-s 20"
        ))
        .unwrap();
        Generator::open(a).unwrap()
    }

    #[test]
    fn echo_counts_messages_over_one_and_many_connections() {
        let addr = echo_server(false);
        let mut one = generator("echo", addr, 1024, 1);
        assert_eq!(one.phase(7).unwrap().ops, 7);
        assert_eq!(one.phase(3).unwrap().ops, 3);
        let mut many = generator("echo", addr, 100 * 1024, 5);
        assert_eq!(many.phase(3).unwrap().ops, 3); // fewer messages than connections
        assert_eq!(many.phase(41).unwrap().ops, 41);
        let mut churn = generator("churn", addr, 64, 1);
        assert_eq!(churn.phase(5).unwrap().ops, 5);
        let mut churn = generator("churn", addr, 64, 4);
        assert_eq!(churn.phase(23).unwrap().ops, 23);
    }

    #[test]
    fn echo_detects_a_corrupted_echo() {
        let addr = echo_server(true);
        let mut one = generator("echo", addr, 1024, 1);
        let e = one.phase(5).unwrap_err();
        assert!(
            e.to_string().contains("echo mismatch at byte 0 of 1024"),
            "{e}"
        );
        let mut many = generator("echo", addr, 1024, 3);
        let e = many.phase(10).unwrap_err();
        assert!(e.to_string().contains("echo mismatch"), "{e}");
    }

    #[test]
    fn udp_ping_pong() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = match server.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut dropped = false;
            while let Ok((k, from)) = server.recv_from(&mut buf) {
                if !dropped {
                    dropped = true; // lose the first datagram: it must be sent again
                    continue;
                }
                let _ = server.send_to(&buf[..k], from);
            }
        });
        let mut g = generator("udp", addr, 1024, 3);
        let out = g.phase(30).unwrap();
        assert_eq!(out.ops, 30);
        assert_eq!(out.retransmits, 1);
    }
}
