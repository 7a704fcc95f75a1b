//! A cross-thread waker on an `eventfd`.
//!
//! [`Waker::wake`] may be called from any thread; the loop registers
//! [`Waker::fd`] for reading and calls [`Waker::drain`] when it turns readable.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An eventfd that wakes a waiting selector.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)`.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The descriptor to watch for reading.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Make the descriptor readable. Never blocks; a counter that is already
    /// at its maximum (`EAGAIN`) is readable anyway, so that error is ignored.
    pub fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        loop {
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
            if n >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(()),
                _ => return Err(err),
            }
        }
    }

    /// Reset the descriptor to not readable. Returns true if it was woken.
    pub fn drain(&self) -> bool {
        let mut buf: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an eventfd we own.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
        n == 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::{BackendKind, Interest, Selector};

    #[test]
    fn wake_from_another_thread_ends_a_wait() {
        let w = std::sync::Arc::new(Waker::new().unwrap());
        let mut sel = Selector::new(BackendKind::Epoll).unwrap();
        sel.register(w.fd(), Interest::READ, 7).unwrap();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            w2.wake().unwrap();
        });
        let mut evs = vec![];
        sel.select(&mut evs, Some(10.0)).unwrap();
        t.join().unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].token, 7);
        assert!(w.drain());
        assert!(!w.drain());
        evs.clear();
        sel.select(&mut evs, Some(0.0)).unwrap();
        assert!(evs.is_empty());
    }

    #[test]
    fn many_wakes_never_block() {
        let w = Waker::new().unwrap();
        for _ in 0..10_000 {
            w.wake().unwrap();
        }
        assert!(w.drain());
    }
}
