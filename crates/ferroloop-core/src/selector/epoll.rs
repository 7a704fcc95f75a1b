//! The epoll backend (level-triggered: no `EPOLLET`; `EPOLLONESHOT` on
//! request).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::{timeout_ms, Event, FdTable, Interest};

/// A level-triggered epoll instance.
#[derive(Debug)]
pub struct Epoll {
    // Shared with a waiter so the descriptor stays open for a wait in flight.
    epfd: Arc<OwnedFd>,
    table: FdTable,
    spare: Vec<libc::epoll_event>,
}

/// The state of one `epoll_wait`.
#[derive(Debug)]
pub struct EpollWaiter {
    epfd: Arc<OwnedFd>,
    buf: Vec<libc::epoll_event>,
    ready: usize,
}

fn flags(interest: Interest) -> u32 {
    let mut f = 0;
    if interest.is_readable() {
        f |= libc::EPOLLIN as u32;
    }
    if interest.is_writable() {
        f |= libc::EPOLLOUT as u32;
    }
    if interest.is_oneshot() {
        f |= libc::EPOLLONESHOT as u32;
    }
    f
}

impl Epoll {
    /// `epoll_create1(EPOLL_CLOEXEC)`.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with a valid flag; the result is checked below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            epfd: Arc::new(epfd),
            table: FdTable::default(),
            spare: Vec::new(),
        })
    }

    pub(crate) fn table(&self) -> &FdTable {
        &self.table
    }

    fn ctl(&self, op: i32, fd: RawFd, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: flags(interest),
            u64: fd as u64,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call; the
        // epoll fd is open (owned by self).
        let rc = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub(crate) fn register(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        if self.table.contains(fd) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{fd} is already registered"),
            ));
        }
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest)?;
        self.table.set(fd, interest, token)
    }

    pub(crate) fn modify(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        if !self.table.contains(fd) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{fd} is not registered"),
            ));
        }
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest)?;
        self.table.set(fd, interest, token)
    }

    /// See [`super::Selector::rearm`]: `EPOLL_CTL_MOD`, and `ADD` where
    /// the kernel has no registration for the file `fd` names now
    /// (`ENOENT`).
    pub(crate) fn rearm(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        if !self.table.contains(fd) {
            return self.register(fd, interest, token);
        }
        match self.ctl(libc::EPOLL_CTL_MOD, fd, interest) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.ctl(libc::EPOLL_CTL_ADD, fd, interest)?
            }
            r => r?,
        }
        self.table.set(fd, interest, token)
    }

    pub(crate) fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        if self.table.remove(fd).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{fd} is not registered"),
            ));
        }
        // A descriptor closed before it was deregistered has already left the
        // epoll set; like Python's selectors, ignore the error.
        let _ignored = self.ctl(libc::EPOLL_CTL_DEL, fd, Interest::NONE);
        Ok(())
    }

    pub(crate) fn prepare_wait(&mut self) -> EpollWaiter {
        let mut buf = std::mem::take(&mut self.spare);
        let want = self.table.len().max(1);
        buf.clear();
        buf.reserve(want);
        EpollWaiter {
            epfd: Arc::clone(&self.epfd),
            buf,
            ready: 0,
        }
    }

    pub(crate) fn finish_wait(&mut self, w: EpollWaiter, events: &mut Vec<Event>) {
        let out_only = !(libc::EPOLLOUT as u32);
        let in_only = !(libc::EPOLLIN as u32);
        for ev in &w.buf[..w.ready] {
            let bits = ev.events;
            let fd = ev.u64 as RawFd;
            if let Some(e) = self
                .table
                .event(fd, bits & out_only != 0, bits & in_only != 0)
            {
                events.push(e);
            }
        }
        let mut buf = w.buf;
        buf.clear();
        self.spare = buf;
    }
}

impl EpollWaiter {
    pub(crate) fn wait(&mut self, timeout: Option<f64>) -> io::Result<()> {
        self.ready = 0;
        let cap = self.buf.capacity().clamp(1, i32::MAX as usize);
        // SAFETY: the buffer has room for `cap` events; epoll_wait writes at most
        // that many and returns how many. The epoll fd is kept open by the Arc.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.buf.as_mut_ptr(),
                cap as i32,
                timeout_ms(timeout),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: epoll_wait initialised the first `n` entries.
        unsafe { self.buf.set_len(n as usize) };
        self.ready = n as usize;
        Ok(())
    }
}
