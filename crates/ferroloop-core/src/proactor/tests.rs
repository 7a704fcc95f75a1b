//! Op-level tests of the driver. They need a working io_uring; where the
//! kernel refuses one they say so and pass without checking anything else.

use super::*;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn ring() -> Option<Proactor<u32>> {
    match Proactor::new(64) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fills two descriptors we then own.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both were just created.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_all(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: writes from a live slice.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(n as usize, data.len());
}

fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> isize {
    // SAFETY: reads into a live slice.
    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
}

fn turn(p: &mut Proactor<u32>, timeout: f64) -> (Vec<Event>, Vec<Completion<u32>>) {
    let (mut ev, mut done, mut shots) = (Vec::new(), Vec::new(), Vec::new());
    let mut w = p.prepare_wait();
    w.wait(Some(timeout)).unwrap();
    p.finish_wait(w, &mut ev, &mut done, &mut shots);
    assert!(shots.is_empty(), "no multishot op was submitted: {shots:?}");
    (ev, done)
}

#[test]
fn readiness_is_level_triggered() {
    let Some(mut p) = ring() else { return };
    let (a, b) = socketpair();
    p.register(a.as_raw_fd(), Interest::READ, 7).unwrap();
    let (ev, _) = turn(&mut p, 0.05);
    assert!(ev.is_empty(), "nothing to read yet: {ev:?}");
    write_all(&b, b"x");
    for _ in 0..3 {
        // Not drained: reported on every wait.
        let (ev, _) = turn(&mut p, 1.0);
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].fd, ev[0].token, ev[0].readable),
            (a.as_raw_fd(), 7, true)
        );
    }
    let mut buf = [0u8; 8];
    assert_eq!(read_some(&a, &mut buf), 1);
    let (ev, _) = turn(&mut p, 0.05);
    assert!(ev.is_empty());
    p.deregister(a.as_raw_fd()).unwrap();
    write_all(&b, b"y");
    let (ev, _) = turn(&mut p, 0.05);
    assert!(ev.is_empty(), "deregistered: {ev:?}");
    assert_eq!(p.len(), 0);
}

#[test]
fn modify_and_write_readiness() {
    let Some(mut p) = ring() else { return };
    let (a, _b) = socketpair();
    p.register(a.as_raw_fd(), Interest::READ, 1).unwrap();
    let (ev, _) = turn(&mut p, 0.02);
    assert!(ev.is_empty());
    p.modify(a.as_raw_fd(), Interest::BOTH, 2).unwrap();
    let (ev, _) = turn(&mut p, 1.0);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].writable && !ev[0].readable && ev[0].token == 2);
    assert!(p.register(a.as_raw_fd(), Interest::READ, 1).is_err());
    // Not open: reported (POLLNVAL), as poll(2) reports it.
    p.register(9999, Interest::READ, 3).unwrap();
    let (ev, _) = turn(&mut p, 1.0);
    assert!(ev
        .iter()
        .any(|e| e.fd == 9999 && e.readable && e.token == 3));
}

#[test]
fn recv_and_send_complete() {
    let Some(mut p) = ring() else { return };
    let (a, b) = socketpair();
    let id = p.submit(Op::recv(a.as_raw_fd(), 16), 5);
    assert!(p.is_in_flight(id));
    let (_, done) = turn(&mut p, 0.02);
    assert!(done.is_empty());
    p.submit(Op::send(b.as_raw_fd(), b"hello".to_vec()), 6);
    let mut got = Vec::new();
    for _ in 0..10 {
        let (_, done) = turn(&mut p, 1.0);
        got.extend(done);
        if got.len() == 2 {
            break;
        }
    }
    got.sort_by_key(|c| c.owner);
    assert_eq!(got[0].owner, 5);
    assert_eq!(*got[0].result.as_ref().unwrap(), 5);
    let Op::Recv { buf, .. } = &got[0].op else {
        panic!()
    };
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(*got[1].result.as_ref().unwrap(), 5);
    assert!(!p.is_in_flight(id));
    assert_eq!(p.in_flight(), 0);
}

#[test]
fn completions_past_the_completion_ring_all_arrive() {
    // 8 submission entries, so 16 completion entries: 200 sends that the
    // kernel finishes at once overflow it many times over.
    let mut p = match Proactor::<u32>::new(8) {
        Ok(p) => p,
        Err(e) => return eprintln!("skipped: {e}"),
    };
    assert_eq!(p.features().cq_entries, 16);
    let (a, b) = socketpair();
    for i in 0..200u32 {
        p.submit(Op::send(a.as_raw_fd(), i.to_le_bytes().to_vec()), i);
    }
    let mut got = Vec::new();
    for _ in 0..100 {
        let (_, done) = turn(&mut p, 1.0);
        got.extend(done);
        if got.len() >= 200 {
            break;
        }
    }
    let mut owners: Vec<u32> = got.iter().map(|c| c.owner).collect();
    owners.sort_unstable();
    assert_eq!(owners, (0..200).collect::<Vec<_>>());
    assert!(got.iter().all(|c| matches!(c.result, Ok(4))));
    // And every send's bytes arrived (each 4-byte send is one message of
    // the stream; sends the kernel had to retry may come later).
    let mut buf = vec![0u8; 1000];
    let mut all = Vec::new();
    while all.len() < 800 {
        let n = read_some(&b, &mut buf);
        assert!(n > 0);
        all.extend_from_slice(&buf[..n as usize]);
    }
    let mut values: Vec<u32> = all
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..200).collect::<Vec<_>>());
    assert_eq!(p.in_flight(), 0);
}

/// Memory lent to a recv: a boxed array the completion gives back.
#[derive(Debug)]
struct Landing(Box<[u8; 64]>);

// SAFETY: the box's memory stays put while the value lives, and only the
// op (then its completion) holds the value.
unsafe impl LentBufMut for Landing {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[test]
fn recv_into_lent_memory_gives_it_back_filled() {
    let Some(mut p) = ring() else { return };
    let (a, b) = socketpair();
    let op = Op::RecvLent {
        fd: a.as_raw_fd(),
        buf: Box::new(Landing(Box::new([0; 64]))),
        poll_first: true,
    };
    p.submit(op, 1);
    p.submit(
        Op::send(b.as_raw_fd(), b"into the caller's memory".to_vec()),
        2,
    );
    let mut got = Vec::new();
    for _ in 0..10 {
        let (_, done) = turn(&mut p, 1.0);
        got.extend(done);
        if got.len() == 2 {
            break;
        }
    }
    got.sort_by_key(|c| c.owner);
    let c = got.remove(0);
    assert_eq!(c.owner, 1);
    let n = c.result.unwrap();
    let Op::RecvLent { buf, .. } = c.op else {
        panic!("not the lent recv")
    };
    let buf: Box<dyn std::any::Any> = buf;
    let landing = buf.downcast::<Landing>().expect("the same value back");
    assert_eq!(&landing.0[..n], b"into the caller's memory");
    assert_eq!(p.in_flight(), 0);
}

/// A lent buffer: shared bytes; the test checks it was dropped.
#[derive(Debug)]
struct Shared(std::sync::Arc<Vec<u8>>);

// SAFETY: the Arc keeps the Vec alive and nobody mutates it.
unsafe impl LentBuf for Shared {
    fn as_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Send 4 MiB (owned or lent) and check it all arrives, in order.
fn check_partial_sends(lent: bool) {
    let Some(mut p) = ring() else { return };
    let (a, b) = socketpair();
    let size = 4 << 20; // far more than a socket buffer holds
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let shared = std::sync::Arc::new(data.clone());
    let op = if lent {
        Op::SendLent {
            fd: a.as_raw_fd(),
            buf: Box::new(Shared(shared.clone())),
            sent: 0,
        }
    } else {
        Op::send(a.as_raw_fd(), data.clone())
    };
    p.submit(op, 1);
    let mut received = Vec::new();
    let mut sent = None;
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..10_000 {
        let (_, done) = turn(&mut p, 0.0);
        if let Some(c) = done.into_iter().next() {
            sent = Some(c.result.unwrap());
        }
        loop {
            let n = read_some(&b, &mut buf);
            if n <= 0 {
                break;
            }
            received.extend_from_slice(&buf[..n as usize]);
        }
        if sent.is_some() && received.len() == size {
            break;
        }
    }
    assert_eq!(sent, Some(size));
    assert!(received == data, "bytes arrive whole and in order");
    assert_eq!(
        std::sync::Arc::strong_count(&shared),
        1,
        "the completion gave the lent buffer back and it was dropped"
    );
}

#[test]
fn partial_sends_are_continued() {
    check_partial_sends(false);
}

#[test]
fn partial_sends_from_a_lent_buffer_are_continued() {
    check_partial_sends(true);
}

#[test]
fn cancel_reports_and_keeps_the_buffer_until_completion() {
    let Some(mut p) = ring() else { return };
    let (a, _b) = socketpair();
    let id = p.submit(Op::recv(a.as_raw_fd(), 32), 9);
    turn(&mut p, 0.0);
    assert!(p.cancel(id));
    assert!(p.is_in_flight(id), "in flight until the kernel answers");
    let mut done = Vec::new();
    for _ in 0..10 {
        let (_, d) = turn(&mut p, 1.0);
        done.extend(d);
        if !done.is_empty() {
            break;
        }
    }
    assert_eq!(done.len(), 1);
    assert!(done[0].cancelled);
    assert_eq!(
        done[0].result.as_ref().unwrap_err().raw_os_error(),
        Some(libc::ECANCELED)
    );
    assert!(!p.cancel(id), "no longer in flight");
    assert_eq!(p.in_flight(), 0);
}

#[test]
fn a_reused_descriptor_never_gets_the_old_registrations_events() {
    let Some(mut p) = ring() else { return };
    let (a, b) = socketpair();
    let fd = a.as_raw_fd();
    p.register(fd, Interest::READ, 1).unwrap();
    turn(&mut p, 0.0); // armed
    p.deregister(fd).unwrap();
    drop(a);
    let (c, d) = socketpair(); // most likely takes `fd` again
                               // The withdrawn poll let go of the old file at once: it is closed, so
                               // its peer cannot write to it any more.
                               // SAFETY: writes from a live slice.
    let n = unsafe { libc::write(b.as_raw_fd(), b"old".as_ptr().cast(), 3) };
    assert_eq!(n, -1);
    assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPIPE));
    let (ev, _) = turn(&mut p, 0.05);
    assert!(ev.is_empty(), "{ev:?}");
    if c.as_raw_fd() == fd {
        p.register(fd, Interest::READ, 2).unwrap();
        write_all(&d, b"new");
        let (ev, _) = turn(&mut p, 1.0);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].token, 2);
    }
}

#[test]
fn accept_and_connect() {
    let Some(mut p) = ring() else { return };
    // SAFETY: plain socket calls on descriptors this test owns.
    unsafe {
        let l = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let l = OwnedFd::from_raw_fd(l);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let alen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        assert_eq!(
            libc::bind(
                l.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                alen
            ),
            0
        );
        assert_eq!(libc::listen(l.as_raw_fd(), 8), 0);
        let mut len = alen;
        libc::getsockname(
            l.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        let c = OwnedFd::from_raw_fd(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ));
        let raw = std::slice::from_raw_parts(
            (&addr as *const libc::sockaddr_in).cast::<u8>(),
            alen as usize,
        );
        p.submit(
            Op::Accept {
                fd: l.as_raw_fd(),
                addr: SockAddr::empty(),
            },
            1,
        );
        p.submit(
            Op::Connect {
                fd: c.as_raw_fd(),
                addr: SockAddr::from_bytes(raw).unwrap(),
            },
            2,
        );
        let mut done = Vec::new();
        for _ in 0..10 {
            let (_, d) = turn(&mut p, 1.0);
            done.extend(d);
            if done.len() == 2 {
                break;
            }
        }
        done.sort_by_key(|c| c.owner);
        let newfd = *done[0].result.as_ref().unwrap() as RawFd;
        assert!(newfd > 0);
        let Op::Accept { addr, .. } = &done[0].op else {
            panic!()
        };
        assert_eq!(addr.storage.ss_family as i32, libc::AF_INET);
        drop(OwnedFd::from_raw_fd(newfd));
        assert!(done[1].result.is_ok());
    }
}

#[test]
fn probe_reports_features_or_a_reason() {
    match probe() {
        Ok(f) => assert!(f.sq_entries >= 8),
        Err(e) => assert!(e.to_string().starts_with("io_uring is unavailable: ")),
    }
}

#[test]
fn cancel_all_drops_armed_and_queued_watches_at_once() {
    let Some(mut p) = ring() else { return };
    let (a, _b) = socketpair();
    let (c, _d) = socketpair();
    // One watch armed in the kernel, one only queued to be armed, and a
    // recv that never completes on its own: none must hold cancel_all up.
    p.register(a.as_raw_fd(), Interest::READ, 1).unwrap();
    turn(&mut p, 0.0);
    p.register(c.as_raw_fd(), Interest::READ, 2).unwrap();
    p.submit(Op::recv(a.as_raw_fd(), 16), 3);
    let start = std::time::Instant::now();
    let (done, clean) = p.cancel_all(5.0);
    assert!(clean, "everything answered");
    assert_eq!(done.len(), 1, "the recv is reported, cancelled");
    assert!(done[0].cancelled);
    assert!(p.is_empty(), "no watch is left registered");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

// Multishot recv into a provided-buffer ring.

/// A ring with a buffer pool of `count` buffers of `size` bytes, where the
/// kernel has multishot recv.
fn multishot_ring(count: u16, size: u32) -> Option<(Proactor<u32>, u16)> {
    let mut p = ring()?;
    if !p.features().recv_multishot {
        eprintln!("skipped: the kernel has no multishot recv");
        return None;
    }
    let group = p
        .add_buf_ring(count, size)
        .expect("a buffer ring registers");
    Some((p, group))
}

/// The owner value the multishot tests' ops carry.
const MULTI_OWNER: u32 = 9;

/// Arm a multishot recv on `fd` from pool `group`.
fn arm_multishot(p: &mut Proactor<u32>, fd: RawFd, group: u16) -> OpId {
    p.submit(Op::RecvMulti { fd, group }, MULTI_OWNER)
}

/// One wait: shots and completions, the bytes of each shot copied out and
/// its buffer recycled unless `keep`.
fn turn_multi(
    p: &mut Proactor<u32>,
    group: u16,
    timeout: f64,
    keep: bool,
) -> (Vec<Vec<u8>>, Vec<Completion<u32>>) {
    let (mut ev, mut done, mut shots) = (Vec::new(), Vec::new(), Vec::new());
    let mut w = p.prepare_wait();
    w.wait(Some(timeout)).unwrap();
    p.finish_wait(w, &mut ev, &mut done, &mut shots);
    let mut got = Vec::new();
    for s in &shots {
        assert_eq!(
            p.shot_owner(s, &done),
            Some(&MULTI_OWNER),
            "a shot names its owner"
        );
        let n = *s.result.as_ref().expect("a shot carries data");
        let bid = s.buffer().expect("a shot names its buffer");
        got.push(p.buffer(group, bid, n).to_vec());
        if !keep {
            p.recycle(group, bid);
        }
    }
    (got, done)
}

#[test]
fn multishot_recv_reports_each_arrival_until_end_of_stream() {
    let Some((mut p, group)) = multishot_ring(8, 64) else {
        return;
    };
    let (a, b) = socketpair();
    let id = arm_multishot(&mut p, a.as_raw_fd(), group);
    let mut all = Vec::new();
    for i in 0..20u8 {
        write_all(&b, &[i; 10]);
        let (got, done) = turn_multi(&mut p, group, 1.0, false);
        assert!(done.is_empty(), "still armed after arrival {i}: {done:?}");
        for g in got {
            all.extend(g);
        }
    }
    // More than the pool's 8 buffers went through: recycling works.
    let want: Vec<u8> = (0..20u8).flat_map(|i| [i; 10]).collect();
    assert_eq!(all, want);
    assert!(p.is_in_flight(id));
    assert_eq!(p.buf_ring(group).unwrap().lent(), 0);
    // A buffer's worth and more: split over buffers, in order.
    let big: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    write_all(&b, &big);
    let mut got_big = Vec::new();
    while got_big.len() < big.len() {
        let (got, done) = turn_multi(&mut p, group, 1.0, false);
        assert!(done.is_empty());
        assert!(got.iter().all(|g| g.len() <= 64), "one buffer per shot");
        got_big.extend(got.into_iter().flatten());
    }
    assert_eq!(got_big, big);
    drop(b);
    let (got, done) = turn_multi(&mut p, group, 1.0, false);
    assert!(got.is_empty());
    assert_eq!(done.len(), 1, "end of stream ends the op");
    assert_eq!(done[0].result.as_ref().ok(), Some(&0));
    assert_eq!(done[0].buffer(), None);
    assert!(!p.is_in_flight(id));
    assert_eq!(p.owner(id), None);
}

#[test]
fn multishot_recv_ends_with_enobufs_when_the_pool_is_empty_and_loses_nothing() {
    let Some((mut p, group)) = multishot_ring(2, 16) else {
        return;
    };
    let (a, b) = socketpair();
    arm_multishot(&mut p, a.as_raw_fd(), group);
    let want: Vec<u8> = (0..4u8).flat_map(|i| [i; 16]).collect();
    write_all(&b, &want);
    let mut held = Vec::new();
    let mut ended = None;
    for _ in 0..4 {
        let (mut ev, mut done, mut shots) = (Vec::new(), Vec::new(), Vec::new());
        let mut w = p.prepare_wait();
        w.wait(Some(1.0)).unwrap();
        p.finish_wait(w, &mut ev, &mut done, &mut shots);
        for s in &shots {
            held.push((s.buffer().unwrap(), *s.result.as_ref().unwrap()));
        }
        if let Some(c) = done.pop() {
            ended = Some(c);
            break;
        }
    }
    let c = ended.expect("the op ends once both buffers are held");
    assert_eq!(
        c.result.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::ENOBUFS)
    );
    let mut got: Vec<u8> = Vec::new();
    for &(bid, n) in &held {
        got.extend_from_slice(p.buffer(group, bid, n));
    }
    if let Some(bid) = c.buffer() {
        got.extend_from_slice(p.buffer(group, bid, 16));
        held.push((bid, 16));
    }
    assert_eq!(p.buf_ring(group).unwrap().lent(), 2);
    // The buffers come back and a new op reads on: no byte was lost.
    for &(bid, _) in &held {
        p.recycle(group, bid);
    }
    arm_multishot(&mut p, a.as_raw_fd(), group);
    drop(b);
    loop {
        let (more, done) = turn_multi(&mut p, group, 1.0, false);
        got.extend(more.into_iter().flatten());
        if let Some(c) = done.first() {
            if let Some(bid) = c.buffer() {
                let n = *c.result.as_ref().unwrap();
                got.extend_from_slice(p.buffer(group, bid, n));
                p.recycle(group, bid);
                continue;
            }
            if c.result.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::ENOBUFS) {
                arm_multishot(&mut p, a.as_raw_fd(), group);
                continue;
            }
            assert_eq!(c.result.as_ref().ok(), Some(&0), "{c:?}");
            break;
        }
    }
    assert_eq!(got, want[..got.len()].to_vec());
    assert_eq!(got.len(), want.len(), "every byte arrived once");
}

#[test]
fn cancelled_multishot_recv_leaves_unread_bytes_in_the_socket() {
    let Some((mut p, group)) = multishot_ring(4, 64) else {
        return;
    };
    let (a, b) = socketpair();
    let id = arm_multishot(&mut p, a.as_raw_fd(), group);
    write_all(&b, b"first");
    let (got, _) = turn_multi(&mut p, group, 1.0, false);
    assert_eq!(got, vec![b"first".to_vec()]);
    assert!(p.cancel(id));
    let (got, done) = turn_multi(&mut p, group, 1.0, false);
    assert!(got.is_empty());
    assert_eq!(done.len(), 1);
    assert!(done[0].cancelled);
    assert_eq!(
        done[0].result.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::ECANCELED)
    );
    write_all(&b, b"second");
    let mut buf = [0u8; 16];
    let n = read_some(&a, &mut buf);
    assert_eq!(
        &buf[..n as usize],
        b"second",
        "the next bytes stay for a plain read"
    );
}

#[test]
fn buffer_rings_refuse_bad_sizes() {
    let Some(mut p) = ring() else { return };
    for (count, size) in [(3u16, 64u32), (0, 64), (8, 0)] {
        let e = p.add_buf_ring(count, size).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{count} x {size}");
    }
}

// Datagrams and multishot accept.

fn udp_socket() -> (OwnedFd, Box<SockAddr>) {
    // SAFETY: a new socket we then own.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    assert!(fd >= 0);
    // SAFETY: just created.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = bind_loopback(&fd);
    (fd, addr)
}

/// Bind `fd` to 127.0.0.1 on a free port; its address.
fn bind_loopback(fd: &OwnedFd) -> Box<SockAddr> {
    // SAFETY: sockaddr_in is plain data.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: binds and reads back our own socket's address.
    unsafe {
        assert_eq!(
            libc::bind(
                fd.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                len
            ),
            0
        );
        let mut got_len = len;
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sin as *mut libc::sockaddr_in).cast(),
            &mut got_len,
        );
        let raw = std::slice::from_raw_parts(
            (&sin as *const libc::sockaddr_in).cast::<u8>(),
            len as usize,
        );
        SockAddr::from_bytes(raw).unwrap()
    }
}

#[test]
fn sendmsg_and_recvmsg_move_datagrams_with_their_addresses() {
    let Some(mut p) = ring() else { return };
    let (a, a_addr) = udp_socket();
    let (b, b_addr) = udp_socket();
    let recv = p.submit(
        Op::RecvMsg {
            fd: b.as_raw_fd(),
            buf: vec![0; 8],
            msg: MsgBuf::new(),
        },
        1,
    );
    p.submit(
        Op::SendMsg {
            fd: a.as_raw_fd(),
            buf: b"datagram-too-long".to_vec(),
            msg: MsgBuf::to(Some(&b_addr)),
        },
        2,
    );
    let mut done = Vec::new();
    for _ in 0..20 {
        done.extend(turn(&mut p, 0.5).1);
        if done.len() == 2 {
            break;
        }
    }
    assert_eq!(done.len(), 2, "{done:?}");
    let sent = done.iter().find(|c| c.owner == 2).unwrap();
    assert_eq!(
        sent.result.as_ref().ok(),
        Some(&17),
        "the datagram went whole"
    );
    let got = done.iter().find(|c| c.id == recv).unwrap();
    assert_eq!(
        got.result.as_ref().ok(),
        Some(&8),
        "truncated to the buffer"
    );
    let Op::RecvMsg { buf, msg, .. } = &got.op else {
        panic!("{:?}", got.op)
    };
    assert_eq!(&buf[..], b"datagram");
    let peer = msg.peer();
    let want = &a_addr;
    // SAFETY: reading the bytes of our own address value.
    let want = unsafe {
        std::slice::from_raw_parts(
            (&want.storage as *const libc::sockaddr_storage).cast::<u8>(),
            want.len as usize,
        )
    };
    assert_eq!(peer, want, "the sender's address");
}

#[test]
fn multishot_accept_reports_each_connection_until_cancelled() {
    let Some(mut p) = ring() else { return };
    if !p.features().accept_multishot {
        eprintln!("skipped: the kernel has no multishot accept");
        return;
    }
    // SAFETY: a new socket we then own.
    let l = unsafe {
        OwnedFd::from_raw_fd(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ))
    };
    let addr = bind_loopback(&l);
    // SAFETY: our listener.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 16) }, 0);
    let id = p.submit(Op::AcceptMulti { fd: l.as_raw_fd() }, 5);
    let mut clients = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..3 {
        // SAFETY: a new socket, connected (blocking) to our listener.
        let c = unsafe {
            let c = OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0));
            let r = libc::connect(
                c.as_raw_fd(),
                (&addr.storage as *const libc::sockaddr_storage).cast(),
                addr.len,
            );
            assert_eq!(r, 0);
            c
        };
        clients.push(c);
        let (mut ev, mut done, mut shots) = (Vec::new(), Vec::new(), Vec::new());
        let mut w = p.prepare_wait();
        w.wait(Some(1.0)).unwrap();
        p.finish_wait(w, &mut ev, &mut done, &mut shots);
        assert!(done.is_empty(), "still armed: {done:?}");
        for s in shots {
            assert_eq!(p.shot_owner(&s, &done), Some(&5));
            let fd = s.result.expect("an accepted connection");
            // SAFETY: the shot hands the new descriptor to us.
            accepted.push(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
    }
    assert_eq!(accepted.len(), 3, "one shot per connection");
    // Each accepted descriptor is the server end of its client.
    write_all(&accepted[1], b"hi");
    let mut buf = [0u8; 4];
    assert_eq!(read_some(&clients[1], &mut buf), 2);
    assert!(p.cancel(id));
    let (_, done) = turn(&mut p, 1.0);
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].result.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::ECANCELED)
    );
}

#[test]
fn a_growing_buffer_ring_fills_only_the_buffers_put_in_it_until_it_grows() {
    let Some(mut p) = ring() else { return };
    if !p.features().recv_multishot {
        eprintln!("skipped: the kernel has no multishot recv");
        return;
    }
    let group = p
        .add_growing_buf_ring(8, 2, 16)
        .expect("a buffer ring registers");
    assert_eq!(p.buf_ring(group).unwrap().posted(), 2);
    let (a, b) = socketpair();
    let want: Vec<u8> = (0..8u8).flat_map(|i| [i; 16]).collect();
    write_all(&b, &want);
    let mut got: Vec<u8> = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    let mut dry = 0;
    arm_multishot(&mut p, a.as_raw_fd(), group);
    while got.len() < want.len() {
        // Keep every buffer: only growing gives the kernel more.
        let (mut ev, mut done, mut shots) = (Vec::new(), Vec::new(), Vec::new());
        let mut w = p.prepare_wait();
        w.wait(Some(1.0)).unwrap();
        p.finish_wait(w, &mut ev, &mut done, &mut shots);
        for s in &shots {
            let bid = s.buffer().unwrap();
            used.insert(bid);
            got.extend_from_slice(p.buffer(group, bid, *s.result.as_ref().unwrap()));
        }
        if let Some(c) = done.pop() {
            if let Some(bid) = c.buffer() {
                used.insert(bid);
                got.extend_from_slice(p.buffer(group, bid, *c.result.as_ref().unwrap()));
            }
            if c.result.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::ENOBUFS) {
                // Every buffer in the ring is held: it grows, by doubling.
                let r = p.buf_ring(group).unwrap();
                assert_eq!(r.lent(), r.posted() as usize);
                assert!(used.iter().all(|&bid| bid < r.posted()));
                dry += 1;
                assert!(p.grow_buf_ring(group));
                arm_multishot(&mut p, a.as_raw_fd(), group);
            }
        }
    }
    assert_eq!(got, want, "no byte lost or reordered");
    // 2, then 4, then 8: two growths, each after the ring ran dry.
    assert_eq!(dry, 2);
    assert_eq!(p.buf_ring(group).unwrap().posted(), 8);
    assert!(!p.grow_buf_ring(group), "the whole pool is in the ring");
}
