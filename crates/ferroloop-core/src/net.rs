//! Socket system calls the loops make on their own account.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// An address as the kernel wrote it (`accept4`'s peer, `recvmmsg`'s
/// senders): the storage and the length the kernel reported. Bytes past
/// that length are zero for a fresh one; a reused one ([`RecvBatch`]) may
/// hold an earlier address's bytes there, which nothing reads.
#[derive(Clone, Copy)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    fn zeroed() -> Self {
        SockAddr {
            // SAFETY: `sockaddr_storage` is plain old data; all zeroes is a
            // valid (AF_UNSPEC) value.
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// The address family (`AF_INET`, ...); 0 for an empty address.
    pub fn family(&self) -> i32 {
        if self.len == 0 {
            0
        } else {
            i32::from(self.storage.ss_family)
        }
    }

    /// The length the kernel reported (0: no address).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes the kernel wrote (the first [`len`](Self::len)).
    pub fn as_bytes(&self) -> &[u8] {
        let len = self
            .len()
            .min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `storage` is plain old data, valid for reads of its whole
        // size, and `len` does not exceed it.
        unsafe {
            std::slice::from_raw_parts((&self.storage as *const libc::sockaddr_storage).cast(), len)
        }
    }

    /// An IPv4 address, when this is one.
    pub fn as_inet(&self) -> Option<&libc::sockaddr_in> {
        (self.family() == libc::AF_INET && self.len() >= std::mem::size_of::<libc::sockaddr_in>())
            // SAFETY: the family says the storage holds a `sockaddr_in`, the
            // length covers it, and `sockaddr_storage` is aligned for any
            // address type.
            .then(|| unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in) })
    }

    /// An IPv6 address, when this is one.
    pub fn as_inet6(&self) -> Option<&libc::sockaddr_in6> {
        (self.family() == libc::AF_INET6 && self.len() >= std::mem::size_of::<libc::sockaddr_in6>())
            // SAFETY: as in `as_inet`, for `sockaddr_in6`.
            .then(|| unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in6) })
    }

    /// A Unix-domain address, when this is one, and how many bytes of its
    /// `sun_path` the kernel filled (0 for an unnamed socket).
    pub fn as_unix(&self) -> Option<(&libc::sockaddr_un, usize)> {
        if self.family() != libc::AF_UNIX {
            return None;
        }
        // SAFETY: the family says the storage holds a `sockaddr_un`, which
        // fits in `sockaddr_storage` (zeroed past what the kernel wrote) and
        // is aligned by it.
        let un = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_un) };
        let path_len = self
            .len()
            .saturating_sub(std::mem::offset_of!(libc::sockaddr_un, sun_path))
            .min(std::mem::size_of_val(&un.sun_path));
        Some((un, path_len))
    }
}

/// Accept one connection on the listening socket `fd`, the new descriptor
/// non-blocking and close-on-exec from the start (`accept4`), so that
/// making it non-blocking afterwards costs no system call. Errors are the
/// kernel's (`WouldBlock` when nothing is waiting, `Interrupted` for a
/// signal: the caller decides whether to try again).
pub fn accept_nonblocking(fd: RawFd) -> io::Result<(OwnedFd, SockAddr)> {
    let mut addr = SockAddr::zeroed();
    // SAFETY: `addr.storage` is writable for `addr.len` bytes, which
    // accept4 updates to what it wrote; any descriptor number is allowed
    // (a bad one fails with EBADF or ENOTSOCK).
    let new = unsafe {
        libc::accept4(
            fd,
            &mut addr.storage as *mut _ as *mut libc::sockaddr,
            &mut addr.len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(new) }, addr))
}

/// The local address of socket `fd` (`getsockname`).
pub fn local_address(fd: RawFd) -> io::Result<SockAddr> {
    let mut addr = SockAddr::zeroed();
    // SAFETY: `addr.storage` is writable for `addr.len` bytes, which
    // getsockname updates to the address's length; a bad descriptor fails
    // with EBADF or ENOTSOCK.
    let r = unsafe {
        libc::getsockname(
            fd,
            &mut addr.storage as *mut _ as *mut libc::sockaddr,
            &mut addr.len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(addr)
}

/// Datagrams taken per [`RecvBatch::recv`] at most.
pub const RECV_BATCH: usize = 16;

/// Room for up to [`RECV_BATCH`] datagrams and their senders' addresses,
/// filled by one `recvmmsg`. Every slot holds `slot` bytes, so a datagram is
/// cut exactly where one `recvfrom(slot)` would cut it. The buffer is zeroed
/// lazily by the allocator (fresh pages), so only the pages datagrams touch
/// become resident.
pub struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    addrs: Vec<SockAddr>,
    lens: [usize; RECV_BATCH],
}

impl RecvBatch {
    pub fn new(slot: usize) -> Self {
        RecvBatch {
            buf: vec![0u8; slot * RECV_BATCH],
            slot,
            addrs: vec![SockAddr::zeroed(); RECV_BATCH],
            lens: [0; RECV_BATCH],
        }
    }

    /// `recvmmsg(fd, .., max, MSG_WAITFORONE)`: up to `max` (at most
    /// [`RECV_BATCH`]) queued datagrams; the count taken. It blocks only as
    /// long as `recvfrom` would for the first datagram (a non-blocking
    /// socket: `WouldBlock` when none is queued) and never waits for more.
    /// An error met after the first datagram is kept by the kernel for the
    /// next call (or `SO_ERROR`), so nothing is lost or reordered. Errors
    /// are the kernel's (`Interrupted` for a signal: the caller decides).
    pub fn recv(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let max = max.clamp(1, RECV_BATCH);
        // SAFETY: iovec and mmsghdr are plain old data; all zeroes is a
        // valid value of each (null pointers, zero lengths).
        let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let base = self.buf.as_mut_ptr();
        for i in 0..max {
            // SAFETY: slot `i` lies within `buf` (RECV_BATCH slots of `slot`
            // bytes).
            iovs[i].iov_base = unsafe { base.add(i * self.slot) }.cast();
            iovs[i].iov_len = self.slot;
            let a = &mut self.addrs[i];
            a.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_name = (&mut a.storage as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = a.len;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `hdrs[..max]` describe `max` writable slots of `buf` and
        // address storages that outlive the call; the kernel writes within
        // the lengths given and fills `msg_len`/`msg_namelen`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                max as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs[..n].iter().enumerate() {
            self.addrs[i].len = h.msg_hdr.msg_namelen;
            self.lens[i] = (h.msg_len as usize).min(self.slot);
        }
        Ok(n)
    }

    /// Datagram `i` of the last [`recv`](Self::recv) and its sender.
    pub fn get(&self, i: usize) -> (&[u8], &SockAddr) {
        let start = i * self.slot;
        (&self.buf[start..start + self.lens[i]], &self.addrs[i])
    }
}

/// `sendto(fd, data, 0, addr)`: one datagram to `addr`. Errors are the
/// kernel's, as with [`RecvBatch::recv`].
pub fn sendto(fd: RawFd, data: &[u8], addr: &SockAddr) -> io::Result<usize> {
    // SAFETY: `data` is readable for its length and `addr.storage` for
    // `addr.len` bytes; the kernel only reads them.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            (&addr.storage as *const libc::sockaddr_storage).cast(),
            addr.len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `send(fd, data, 0)` on a connected socket.
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is readable for its length; the kernel only reads it.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn flags(fd: RawFd) -> (i32, i32) {
        // SAFETY: fcntl's get calls only read the descriptor's flags.
        unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        }
    }

    #[test]
    fn accepts_nonblocking_and_cloexec_with_the_peer_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let err = accept_nonblocking(listener.as_raw_fd()).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (fd, addr) = accept_nonblocking(listener.as_raw_fd()).unwrap();
        let (fl, fdfl) = flags(fd.as_raw_fd());
        assert!(fl & libc::O_NONBLOCK != 0 && fdfl & libc::FD_CLOEXEC != 0);
        let v4 = addr.as_inet().expect("an IPv4 peer");
        let local = client.local_addr().unwrap();
        assert_eq!(u16::from_be(v4.sin_port), local.port());
        assert_eq!(u32::from_be(v4.sin_addr.s_addr), 0x7f00_0001);
        assert!(addr.as_inet6().is_none() && addr.as_unix().is_none());

        client.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        // SAFETY: `b` is writable for one byte.
        let n = unsafe { libc::recv(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1, 0) };
        assert_eq!((n, b[0]), (1, b'x'));
    }

    #[test]
    fn unix_peers_named_and_unnamed() {
        let dir = std::env::temp_dir().join(format!("ferroloop-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        let (_fd, addr) = accept_nonblocking(listener.as_raw_fd()).unwrap();
        let (_, path_len) = addr.as_unix().expect("a Unix peer");
        assert_eq!(path_len, 0, "the client never bound a name");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recv_batch_takes_queued_datagrams_with_their_senders() {
        use std::net::UdpSocket;
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        let mut batch = RecvBatch::new(64);
        let err = batch.recv(server.as_raw_fd(), RECV_BATCH).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        a.send_to(b"a1", to).unwrap();
        b.send_to(b"b1", to).unwrap();
        a.send_to(&[7u8; 100], to).unwrap(); // longer than a slot: cut
        assert_eq!(batch.recv(server.as_raw_fd(), RECV_BATCH).unwrap(), 3);
        let port = |s: &SockAddr| u16::from_be(s.as_inet().unwrap().sin_port);
        let (d, s) = batch.get(0);
        assert_eq!((d, port(s)), (&b"a1"[..], a.local_addr().unwrap().port()));
        let (d, s) = batch.get(1);
        assert_eq!((d, port(s)), (&b"b1"[..], b.local_addr().unwrap().port()));
        let (d, s) = batch.get(2);
        assert_eq!(
            (d, port(s)),
            (&[7u8; 64][..], a.local_addr().unwrap().port())
        );
        assert_ne!(batch.get(0).1.as_bytes(), batch.get(1).1.as_bytes());
        assert_eq!(batch.get(0).1.as_bytes(), batch.get(2).1.as_bytes());
        // At most `max`, the rest stays queued.
        for i in 0..3u8 {
            a.send_to(&[i], to).unwrap();
        }
        assert_eq!(batch.recv(server.as_raw_fd(), 2).unwrap(), 2);
        assert_eq!(batch.recv(server.as_raw_fd(), 2).unwrap(), 1);
        assert_eq!(batch.get(0).0, &[2u8][..]);
        // Sending back natively to a received address.
        let back = *batch.get(0).1;
        assert_eq!(sendto(server.as_raw_fd(), b"pong", &back).unwrap(), 4);
        let mut buf = [0u8; 8];
        a.set_nonblocking(false).unwrap();
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], to));
    }

    #[test]
    fn a_bad_descriptor_is_the_kernels_error() {
        let err = accept_nonblocking(-1).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
