//! Socket system calls the loops make on their own account.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// An address as the kernel wrote it (`accept4`'s peer): the storage and
/// the length the kernel reported; bytes past that length are zero.
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
    fn a_bad_descriptor_is_the_kernels_error() {
        let err = accept_nonblocking(-1).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
