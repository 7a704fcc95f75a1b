//! Level-triggered readiness selectors.
//!
//! Three backends, one interface, chosen at run time by [`BackendKind`] and
//! dispatched through an enum (no trait object on the hot path):
//!
//! * `epoll` ([`epoll::Epoll`]), the default on Linux;
//! * `poll` ([`poll::Poll`]);
//! * `select` ([`select::Select`]), limited to descriptors below `FD_SETSIZE`.
//!
//! All three are level-triggered: a descriptor that stays readable is
//! reported on every wait until it is drained or deregistered, which is what
//! asyncio's `add_reader` promises. Events are reported the way Python's
//! `selectors` module reports them: an error or hang-up marks the descriptor
//! both readable and writable, masked by the interest it was registered with.
//!
//! A wait is split in three steps so that the owner can wait without holding
//! a borrow of its selector (the Python layer releases the GIL during the wait
//! and another thread may register descriptors meanwhile):
//! [`Selector::prepare_wait`] builds a [`Waiter`] that owns everything the
//! system call needs, [`Waiter::wait`] blocks, and [`Selector::finish_wait`]
//! turns the result into [`Event`]s using the registrations as they are
//! *after* the wait — a descriptor deregistered meanwhile reports nothing.

pub mod epoll;
pub mod poll;
pub mod select;

use std::io;
use std::os::fd::RawFd;

/// Which readiness a registration waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest(u8);

impl Interest {
    /// Nothing (not a valid registration).
    pub const NONE: Interest = Interest(0);
    /// Readable.
    pub const READ: Interest = Interest(1);
    /// Writable.
    pub const WRITE: Interest = Interest(2);
    /// Readable or writable.
    pub const BOTH: Interest = Interest(3);
    const ONESHOT: u8 = 4;
    const EDGE: u8 = 8;

    /// An interest from two flags.
    pub const fn new(read: bool, write: bool) -> Self {
        Interest((read as u8) | ((write as u8) << 1))
    }

    /// The same directions, reported once: after its first event the
    /// registration stays but reports nothing until it is modified
    /// (re-armed) or removed. Only where [`Selector::supports_oneshot`];
    /// elsewhere the flag is ignored, and the registration level-triggered.
    pub const fn oneshot(self) -> Self {
        Interest(self.0 | Self::ONESHOT)
    }

    /// True for a [`Interest::oneshot`] registration.
    pub const fn is_oneshot(self) -> bool {
        self.0 & Self::ONESHOT != 0
    }

    /// The same directions, edge-triggered: an event when the descriptor
    /// becomes ready (for a socket, on every arrival of data or of room),
    /// not at every wait while it stays ready. The owner must read until
    /// it knows the descriptor drained, or call [`Selector::refresh`].
    /// Only where [`Selector::supports_oneshot`] (epoll); elsewhere the
    /// flag is ignored, and the registration level-triggered. On epoll a
    /// readable edge registration also watches for the end of the peer's
    /// stream and urgent data (`EPOLLRDHUP`, `EPOLLPRI`), which no later
    /// edge would report again (a read that takes the last bytes does not
    /// see the end behind them, and one stopping at TCP's urgent mark
    /// leaves bytes queued): once the stream has ended, failed or hung up,
    /// every wait reports the registration, as a level-triggered one; urgent
    /// data makes it level-triggered until it is removed. Once set, a
    /// `modify` keeps it.
    pub const fn edge(self) -> Self {
        Interest(self.0 | Self::EDGE)
    }

    /// True for an [`Interest::edge`] registration.
    pub const fn is_edge(self) -> bool {
        self.0 & Self::EDGE != 0
    }

    /// The same, level-triggered.
    pub const fn level(self) -> Self {
        Interest(self.0 & !Self::EDGE)
    }
    /// True if reading is watched.
    pub const fn is_readable(self) -> bool {
        self.0 & 1 != 0
    }
    /// True if writing is watched.
    pub const fn is_writable(self) -> bool {
        self.0 & 2 != 0
    }
    /// True if nothing is watched.
    pub const fn is_empty(self) -> bool {
        self.0 & 3 == 0
    }
}

/// One ready descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The descriptor.
    pub fd: RawFd,
    /// The token it was registered with.
    pub token: u64,
    /// Ready for reading (or in error / hung up, if reading is watched).
    pub readable: bool,
    /// Ready for writing (or in error / hung up, if writing is watched).
    pub writable: bool,
}

/// The backend a [`Selector`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Linux epoll.
    Epoll,
    /// POSIX poll.
    Poll,
    /// POSIX select.
    Select,
}

impl BackendKind {
    /// The most efficient backend on this platform.
    pub const fn best() -> Self {
        BackendKind::Epoll
    }

    /// The lower-case name (`"epoll"`, `"poll"`, `"select"`).
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::Epoll => "epoll",
            BackendKind::Poll => "poll",
            BackendKind::Select => "select",
        }
    }

    /// Parse a lower-case name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "epoll" => Some(BackendKind::Epoll),
            "poll" => Some(BackendKind::Poll),
            "select" => Some(BackendKind::Select),
            _ => None,
        }
    }
}

/// Registrations, indexed by descriptor number.
#[derive(Debug, Default, Clone)]
pub(crate) struct FdTable {
    slots: Vec<Option<(Interest, u64)>>,
    count: usize,
}

impl FdTable {
    pub(crate) fn get(&self, fd: RawFd) -> Option<(Interest, u64)> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get(i).copied().flatten())
    }

    pub(crate) fn contains(&self, fd: RawFd) -> bool {
        self.get(fd).is_some()
    }

    /// Every registration, by descriptor.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (RawFd, Interest, u64)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|(interest, token)| (i as RawFd, interest, token)))
    }

    pub(crate) fn set(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        let i = usize::try_from(fd).map_err(|_| bad_fd(fd))?;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].replace((interest, token)).is_none() {
            self.count += 1;
        }
        Ok(())
    }

    pub(crate) fn remove(&mut self, fd: RawFd) -> Option<(Interest, u64)> {
        let slot = usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get_mut(i))?;
        let old = slot.take();
        if old.is_some() {
            self.count -= 1;
        }
        old
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Build an event the way Python's selectors do: `read_like` is "any
    /// condition other than writable", `write_like` "any condition other than
    /// readable"; both are masked by the registered interest.
    pub(crate) fn event(&self, fd: RawFd, read_like: bool, write_like: bool) -> Option<Event> {
        let (interest, token) = self.get(fd)?;
        let readable = read_like && interest.is_readable();
        let writable = write_like && interest.is_writable();
        (readable || writable).then_some(Event {
            fd,
            token,
            readable,
            writable,
        })
    }
}

pub(crate) fn bad_fd(fd: RawFd) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("Invalid file descriptor: {fd}"),
    )
}

/// Milliseconds for `epoll_wait` / `poll`, rounded up as Python's selectors
/// do, so a wait never ends before its deadline. `None` waits for ever.
pub(crate) fn timeout_ms(timeout: Option<f64>) -> i32 {
    match timeout {
        None => -1,
        Some(t) if t <= 0.0 => 0,
        Some(t) => {
            let ms = (t * 1e3).ceil();
            if ms >= i32::MAX as f64 {
                i32::MAX
            } else {
                ms as i32
            }
        }
    }
}

/// A level-triggered readiness selector.
#[derive(Debug)]
pub enum Selector {
    /// epoll backend.
    Epoll(epoll::Epoll),
    /// poll backend.
    Poll(poll::Poll),
    /// select backend.
    Select(select::Select),
}

/// What one wait needs, detached from its [`Selector`]; `Send`, so it can be
/// moved to wherever the caller blocks.
#[derive(Debug)]
pub enum Waiter {
    /// epoll wait state.
    Epoll(epoll::EpollWaiter),
    /// poll wait state.
    Poll(poll::PollWaiter),
    /// select wait state (boxed: two `fd_set`s are large).
    Select(Box<select::SelectWaiter>),
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Selector::Epoll($s) => $e,
            Selector::Poll($s) => $e,
            Selector::Select($s) => $e,
        }
    };
}

impl Selector {
    /// A selector on the given backend.
    pub fn new(kind: BackendKind) -> io::Result<Self> {
        Ok(match kind {
            BackendKind::Epoll => Selector::Epoll(epoll::Epoll::new()?),
            BackendKind::Poll => Selector::Poll(poll::Poll::new()),
            BackendKind::Select => Selector::Select(select::Select::new()),
        })
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Selector::Epoll(_) => BackendKind::Epoll,
            Selector::Poll(_) => BackendKind::Poll,
            Selector::Select(_) => BackendKind::Select,
        }
    }

    /// Watch `fd` for `interest`; events carry `token`. Fails with
    /// `AlreadyExists` if `fd` is registered.
    pub fn register(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        if fd < 0 {
            return Err(bad_fd(fd));
        }
        dispatch!(self, s => s.register(fd, interest, token))
    }

    /// Change what a registered `fd` is watched for.
    pub fn modify(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        dispatch!(self, s => s.modify(fd, interest, token))
    }

    /// True when [`Interest::oneshot`] is honoured (epoll's `EPOLLONESHOT`).
    pub fn supports_oneshot(&self) -> bool {
        matches!(self, Selector::Epoll(_))
    }

    /// Arm again a registration that may have outlived its file: `fd`
    /// is in the table, but the descriptor may have been closed (and the
    /// number reused) since, which took the kernel's registration with it.
    /// Modifies it where it still exists, and registers the file the
    /// number names now where it does not. (epoll tells the two apart by
    /// the file, not the number, so a registration left behind by a file
    /// that lives on elsewhere is never taken for the new one.)
    pub fn rearm(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        match self {
            Selector::Epoll(s) => s.rearm(fd, interest, token),
            _ => self.modify(fd, interest, token),
        }
    }

    /// For an edge-triggered registration ([`Interest::edge`]): look at
    /// `fd` again now, so that the next wait reports it if it is still
    /// ready (after a read that may have left bytes queued). Nothing for
    /// any other registration.
    pub fn refresh(&mut self, fd: RawFd) -> io::Result<()> {
        match self {
            Selector::Epoll(s) => s.refresh(fd),
            _ => Ok(()),
        }
    }

    /// [`Selector::refresh`] for every edge-triggered registration: after
    /// a wait whose events were dropped before they were handled (a panic
    /// between the wait and their dispatch), what is still ready is
    /// reported again, as level-triggered registrations are anyway.
    pub fn refresh_all(&mut self) {
        if let Selector::Epoll(s) = self {
            s.refresh_all();
        }
    }

    /// Stop watching `fd`. Fails with `NotFound` if it is not registered.
    /// A descriptor that was already closed is forgotten without error.
    pub fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        dispatch!(self, s => s.deregister(fd))
    }

    /// The registration of `fd`, if any.
    pub fn registration(&self, fd: RawFd) -> Option<(Interest, u64)> {
        dispatch!(self, s => s.table().get(fd))
    }

    /// Number of registered descriptors.
    pub fn len(&self) -> usize {
        dispatch!(self, s => s.table().len())
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Step 1 of a wait: detach what the system call needs.
    pub fn prepare_wait(&mut self) -> Waiter {
        match self {
            Selector::Epoll(s) => Waiter::Epoll(s.prepare_wait()),
            Selector::Poll(s) => Waiter::Poll(s.prepare_wait()),
            Selector::Select(s) => Waiter::Select(Box::new(s.prepare_wait())),
        }
    }

    /// Step 3 of a wait: append the ready descriptors to `events`, and keep
    /// the waiter's buffers for the next wait.
    pub fn finish_wait(&mut self, waiter: Waiter, events: &mut Vec<Event>) {
        match (self, waiter) {
            (Selector::Epoll(s), Waiter::Epoll(w)) => s.finish_wait(w, events),
            (Selector::Poll(s), Waiter::Poll(w)) => s.finish_wait(w, events),
            (Selector::Select(s), Waiter::Select(w)) => s.finish_wait(*w, events),
            _ => {}
        }
    }

    /// Wait up to `timeout` seconds (`None`: no limit) and append the ready
    /// descriptors to `events`. `EINTR` is returned as an error
    /// (`ErrorKind::Interrupted`) so the caller can handle signals.
    pub fn select(&mut self, events: &mut Vec<Event>, timeout: Option<f64>) -> io::Result<()> {
        let mut w = self.prepare_wait();
        let r = w.wait(timeout);
        self.finish_wait(w, events);
        r
    }
}

impl Waiter {
    /// Step 2 of a wait: block up to `timeout` seconds (`None`: no limit).
    pub fn wait(&mut self, timeout: Option<f64>) -> io::Result<()> {
        match self {
            Waiter::Epoll(w) => w.wait(timeout),
            Waiter::Poll(w) => w.wait(timeout),
            Waiter::Select(w) => w.wait(timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_milliseconds() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(0.0)), 0);
        assert_eq!(timeout_ms(Some(-3.0)), 0);
        assert_eq!(timeout_ms(Some(0.0001)), 1);
        assert_eq!(timeout_ms(Some(0.0015)), 2);
        assert_eq!(timeout_ms(Some(2.0)), 2000);
        assert_eq!(timeout_ms(Some(1e12)), i32::MAX);
    }

    #[test]
    fn interest_flags() {
        assert!(Interest::READ.is_readable() && !Interest::READ.is_writable());
        assert!(Interest::BOTH.is_readable() && Interest::BOTH.is_writable());
        assert_eq!(Interest::new(true, true), Interest::BOTH);
        assert!(Interest::new(false, false).is_empty());
        let once = Interest::READ.oneshot();
        assert!(once.is_oneshot() && once.is_readable() && !once.is_writable());
        assert!(!once.is_empty() && !Interest::READ.is_oneshot());
    }
}
