//! The select backend (descriptors below `FD_SETSIZE` only).

use std::io;
use std::os::fd::RawFd;

use super::{Event, FdTable, Interest};

/// A level-triggered selector on `select(2)`.
#[derive(Debug, Default)]
pub struct Select {
    table: FdTable,
    fds: Vec<RawFd>,
}

/// The state of one `select`.
pub struct SelectWaiter {
    read: libc::fd_set,
    write: libc::fd_set,
    nfds: i32,
    fds: Vec<RawFd>,
}

impl std::fmt::Debug for SelectWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelectWaiter")
            .field("nfds", &self.nfds)
            .finish()
    }
}

fn empty_set() -> libc::fd_set {
    // SAFETY: fd_set is plain data; FD_ZERO then gives it its defined empty value.
    unsafe {
        let mut s: libc::fd_set = std::mem::zeroed();
        libc::FD_ZERO(&mut s);
        s
    }
}

impl Select {
    /// An empty select set.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn table(&self) -> &FdTable {
        &self.table
    }

    pub(crate) fn register(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        if fd >= libc::FD_SETSIZE as RawFd {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "filedescriptor out of range in select()",
            ));
        }
        if self.table.contains(fd) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{fd} is already registered"),
            ));
        }
        self.table.set(fd, interest, token)?;
        self.fds.push(fd);
        Ok(())
    }

    pub(crate) fn modify(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        if !self.table.contains(fd) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{fd} is not registered"),
            ));
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
        if let Some(i) = self.fds.iter().position(|&f| f == fd) {
            self.fds.swap_remove(i);
        }
        Ok(())
    }

    pub(crate) fn prepare_wait(&mut self) -> SelectWaiter {
        let mut read = empty_set();
        let mut write = empty_set();
        let mut nfds = 0;
        for &fd in &self.fds {
            if let Some((interest, _)) = self.table.get(fd) {
                // SAFETY: register() admits only 0 <= fd < FD_SETSIZE.
                unsafe {
                    if interest.is_readable() {
                        libc::FD_SET(fd, &mut read);
                    }
                    if interest.is_writable() {
                        libc::FD_SET(fd, &mut write);
                    }
                }
                nfds = nfds.max(fd + 1);
            }
        }
        SelectWaiter {
            read,
            write,
            nfds,
            fds: self.fds.clone(),
        }
    }

    pub(crate) fn finish_wait(&mut self, w: SelectWaiter, events: &mut Vec<Event>) {
        for &fd in &w.fds {
            // SAFETY: fd < FD_SETSIZE (checked at registration); the sets are initialised.
            let (r, wr) = unsafe { (libc::FD_ISSET(fd, &w.read), libc::FD_ISSET(fd, &w.write)) };
            if r || wr {
                if let Some(e) = self.table.event(fd, r, wr) {
                    events.push(e);
                }
            }
        }
    }
}

impl SelectWaiter {
    pub(crate) fn wait(&mut self, timeout: Option<f64>) -> io::Result<()> {
        let mut tv;
        let tvp = match timeout {
            None => std::ptr::null_mut(),
            Some(t) => {
                let t = t.max(0.0);
                // Round up to the microsecond, so the wait never ends early.
                let us = (t * 1e6).ceil().min(i64::MAX as f64 / 2.0) as i64;
                tv = libc::timeval {
                    tv_sec: (us / 1_000_000) as libc::time_t,
                    tv_usec: (us % 1_000_000) as libc::suseconds_t,
                };
                &mut tv as *mut libc::timeval
            }
        };
        // SAFETY: the sets are initialised fd_sets owned by self; `tvp` is null
        // or points to a live timeval.
        let n = unsafe {
            libc::select(
                self.nfds,
                &mut self.read,
                &mut self.write,
                std::ptr::null_mut(),
                tvp,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            self.read = empty_set();
            self.write = empty_set();
            return Err(err);
        }
        Ok(())
    }
}
