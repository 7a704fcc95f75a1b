//! The epoll backend (level-triggered, as Python's selectors; `EPOLLET`
//! or `EPOLLONESHOT` on request).

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
    /// Edge registrations made level-triggered by urgent data, until they
    /// are removed (see [`Interest::edge`]).
    level_only: Vec<RawFd>,
    /// Edge registrations whose stream ended, failed or hung up: reported
    /// at every wait from then on, as level-triggered ones are, without
    /// asking the kernel (the `bool`: writable too, for an error or a
    /// hang-up).
    ended: Vec<(RawFd, bool)>,
}

/// The state of one `epoll_wait`.
#[derive(Debug)]
pub struct EpollWaiter {
    epfd: Arc<OwnedFd>,
    buf: Vec<libc::epoll_event>,
    ready: usize,
    /// An ended registration will be reported: do not block.
    now: bool,
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
    } else if interest.is_edge() {
        f |= libc::EPOLLET as u32;
        if interest.is_readable() {
            f |= (libc::EPOLLPRI | libc::EPOLLRDHUP) as u32;
        }
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
            level_only: Vec::new(),
            ended: Vec::new(),
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
        let Some((old, _)) = self.table.get(fd) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{fd} is not registered"),
            ));
        };
        let interest = self.edge_kept(fd, old, interest);
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest)?;
        self.forget_ended(fd, interest);
        self.table.set(fd, interest, token)
    }

    /// See [`super::Selector::rearm`]: `EPOLL_CTL_MOD`, and `ADD` where
    /// the kernel has no registration for the file `fd` names now
    /// (`ENOENT`).
    pub(crate) fn rearm(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        let Some((old, _)) = self.table.get(fd) else {
            return self.register(fd, interest, token);
        };
        let interest = self.edge_kept(fd, old, interest);
        match self.ctl(libc::EPOLL_CTL_MOD, fd, interest) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.ctl(libc::EPOLL_CTL_ADD, fd, interest)?
            }
            r => r?,
        }
        self.forget_ended(fd, interest);
        self.table.set(fd, interest, token)
    }

    /// What a change of `fd`'s registration from `old` to `new` asks of
    /// the kernel: an edge registration stays one (unless one-shot is
    /// asked), and one made level-triggered by urgent data stays level.
    fn edge_kept(&self, fd: RawFd, old: Interest, new: Interest) -> Interest {
        if self.level_only.contains(&fd) {
            new.level()
        } else if old.is_edge() && !new.is_oneshot() {
            new.edge()
        } else {
            new
        }
    }

    /// After `fd`'s registration changed to `interest`: drop its entry in
    /// `ended` when it no longer watches what the condition makes ready.
    /// If it watches reading again later, the `EPOLL_CTL_MOD` that says so
    /// has the kernel look again, and the end is reported anew.
    fn forget_ended(&mut self, fd: RawFd, interest: Interest) {
        if !interest.is_edge() || !interest.is_readable() {
            self.ended
                .retain(|&(f, both)| f != fd || (both && interest.is_edge()));
        }
    }

    /// See [`super::Selector::refresh`]: `EPOLL_CTL_MOD` with the same
    /// interest makes the kernel poll the file again and queue it if ready.
    pub(crate) fn refresh(&mut self, fd: RawFd) -> io::Result<()> {
        match self.table.get(fd) {
            Some((interest, _)) if interest.is_edge() => {
                self.ctl(libc::EPOLL_CTL_MOD, fd, interest)
            }
            _ => Ok(()),
        }
    }

    /// See [`super::Selector::refresh_all`]; a descriptor that is gone
    /// is left for its owner's next call to find.
    pub(crate) fn refresh_all(&mut self) {
        let edges: Vec<(RawFd, Interest)> = self
            .table
            .iter()
            .filter(|(_, i, _)| i.is_edge())
            .map(|(fd, i, _)| (fd, i))
            .collect();
        for (fd, interest) in edges {
            let _gone = self.ctl(libc::EPOLL_CTL_MOD, fd, interest);
        }
    }

    pub(crate) fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        self.level_only.retain(|&f| f != fd);
        self.ended.retain(|&(f, _)| f != fd);
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
            now: self.ended_reports(),
        }
    }

    pub(crate) fn finish_wait(&mut self, w: EpollWaiter, events: &mut Vec<Event>) {
        let out_only = !(libc::EPOLLOUT as u32);
        let in_only = !(libc::EPOLLIN as u32);
        let first = events.len();
        for ev in &w.buf[..w.ready] {
            let bits = ev.events;
            let fd = ev.u64 as RawFd;
            if bits & (URGENT | ENDED) != 0 {
                self.sticky(fd, bits);
            }
            if let Some(e) = self
                .table
                .event(fd, bits & out_only != 0, bits & in_only != 0)
            {
                events.push(e);
            }
        }
        // What a level-triggered registration would report again.
        for &(fd, both) in &self.ended {
            if let Some(e) = self.table.event(fd, true, both) {
                if !events[first..].iter().any(|x| x.fd == fd) {
                    events.push(e);
                }
            }
        }
        let mut buf = w.buf;
        buf.clear();
        self.spare = buf;
    }
}

/// TCP urgent data: a read stops at the urgent mark, with bytes left and
/// no new edge to come for them.
const URGENT: u32 = libc::EPOLLPRI as u32;
/// The end of the peer's stream, an error, a hang-up: conditions that stay
/// once they come. A read that takes the last bytes before the end does
/// not see it, and no new edge comes for it.
const ENDED: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;

impl Epoll {
    /// A report of `bits` for `fd`: an edge registration with urgent data
    /// becomes level-triggered for good (`EPOLL_CTL_MOD`: rare); one whose
    /// stream ended is reported at every wait from now on, as a
    /// level-triggered one is, by the loop itself (no system call: every
    /// connection ends).
    fn sticky(&mut self, fd: RawFd, bits: u32) {
        let Some((interest, token)) = self.table.get(fd) else {
            return;
        };
        if !interest.is_edge() {
            return;
        }
        if bits & URGENT != 0 {
            let level = interest.level();
            // If the change fails (the descriptor is gone), so will the reads.
            if self.ctl(libc::EPOLL_CTL_MOD, fd, level).is_ok() {
                self.level_only.push(fd);
                self.ended.retain(|&(f, _)| f != fd);
                let _kept = self.table.set(fd, level, token);
            }
            return;
        }
        let both = bits & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        match self.ended.iter_mut().find(|(f, _)| *f == fd) {
            Some(e) => e.1 |= both,
            None => self.ended.push((fd, both)),
        }
    }

    /// True when an ended registration will be reported by the next wait
    /// (it still watches what its condition makes ready).
    fn ended_reports(&self) -> bool {
        self.ended.iter().any(|&(fd, both)| {
            self.table
                .get(fd)
                .is_some_and(|(i, _)| i.is_readable() || (both && i.is_writable()))
        })
    }
}

impl EpollWaiter {
    pub(crate) fn wait(&mut self, timeout: Option<f64>) -> io::Result<()> {
        self.ready = 0;
        let timeout = if self.now { Some(0.0) } else { timeout };
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
