//! The poll backend.

use std::io;
use std::os::fd::RawFd;

use super::{timeout_ms, Event, FdTable, Interest};

/// A level-triggered selector on `poll(2)`.
#[derive(Debug, Default)]
pub struct Poll {
    table: FdTable,
    // Registered descriptors in registration order; rebuilt lazily.
    fds: Vec<RawFd>,
    spare: Vec<libc::pollfd>,
}

/// The state of one `poll`.
#[derive(Debug)]
pub struct PollWaiter {
    pfds: Vec<libc::pollfd>,
}

fn flags(interest: Interest) -> i16 {
    let mut f = 0;
    if interest.is_readable() {
        f |= libc::POLLIN;
    }
    if interest.is_writable() {
        f |= libc::POLLOUT;
    }
    f
}

impl Poll {
    /// An empty poll set.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn table(&self) -> &FdTable {
        &self.table
    }

    pub(crate) fn register(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
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

    pub(crate) fn prepare_wait(&mut self) -> PollWaiter {
        let mut pfds = std::mem::take(&mut self.spare);
        pfds.clear();
        for &fd in &self.fds {
            if let Some((interest, _)) = self.table.get(fd) {
                pfds.push(libc::pollfd {
                    fd,
                    events: flags(interest),
                    revents: 0,
                });
            }
        }
        PollWaiter { pfds }
    }

    pub(crate) fn finish_wait(&mut self, w: PollWaiter, events: &mut Vec<Event>) {
        for p in &w.pfds {
            let r = p.revents;
            if r == 0 {
                continue;
            }
            if let Some(e) = self
                .table
                .event(p.fd, r & !libc::POLLOUT != 0, r & !libc::POLLIN != 0)
            {
                events.push(e);
            }
        }
        self.spare = w.pfds;
    }
}

impl PollWaiter {
    pub(crate) fn wait(&mut self, timeout: Option<f64>) -> io::Result<()> {
        // SAFETY: `pfds` is a valid array of `len` pollfd structs for the call.
        let n = unsafe {
            libc::poll(
                self.pfds.as_mut_ptr(),
                self.pfds.len() as libc::nfds_t,
                timeout_ms(timeout),
            )
        };
        if n < 0 {
            for p in &mut self.pfds {
                p.revents = 0;
            }
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
