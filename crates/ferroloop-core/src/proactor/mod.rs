//! The proactor engine: a completion-based driver on Linux io_uring.
//!
//! One [`Proactor`] is one ring. Two kinds of work go through it:
//!
//! * **Readiness**, for `add_reader` / `add_writer`: [`Proactor::register`],
//!   [`modify`](Proactor::modify) and [`deregister`](Proactor::deregister)
//!   have the [`Selector`](crate::Selector) contract, level-triggered. Each
//!   watched descriptor has at most one one-shot `POLL_ADD` in flight; when it
//!   completes the descriptor is reported and queued to be armed again before
//!   the next wait, so a descriptor that stays readable is reported on every
//!   wait, as epoll in level-triggered mode reports it.
//! * **Completion ops** ([`Op`]): recv, multishot recv into a
//!   provided-buffer ring ([`BufRing`], [`add_buf_ring`](Proactor::add_buf_ring)),
//!   send (continued by the driver after a partial send), recvmsg and
//!   sendmsg for datagrams ([`MsgBuf`]), read, write, accept, multishot
//!   accept, connect, close and one-shot polls.
//!   The driver owns every op with its buffer from [`submit`](Proactor::submit)
//!   until its completion arrives, also after [`cancel`](Proactor::cancel):
//!   cancelling is a request to the kernel, and the op, its buffer and its
//!   owner value `T` come back as a [`Completion`] once the kernel is done
//!   with them. A multishot op also reports each result before its last
//!   as a [`Shot`], keeping the op and its owner in flight.
//!
//! Submissions made during a pass are queued in the submission ring and
//! handed to the kernel together with the wait, by one `io_uring_enter` (see
//! [`prepare_wait`](Proactor::prepare_wait)); completions are reaped in
//! [`finish_wait`](Proactor::finish_wait). Op identities carry a generation,
//! so a completion for an op that was abandoned, or for a descriptor number
//! that was closed and reused since, never reaches the new owner.
//!
//! Set-up probes what the kernel has ([`Features`]); an unusable io_uring
//! (seccomp, `kernel.io_uring_disabled`, an old kernel, memlock limits) is an
//! [`Unavailable`] error that names the cause. Readiness follows poll(2):
//! a descriptor that is not open registers, and is reported as `POLLNVAL`. The ring's memory is not
//! inherited by forked children (`MADV_DONTFORK`), and a child never touches
//! the parent's ring: a proactor dropped in another process only closes its
//! descriptor.

mod bufring;
mod ops;
mod setup;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use io_uring::{opcode, squeue, types, IoUring};

pub use bufring::BufRing;
pub use ops::{Completion, LentBuf, LentBufMut, MsgBuf, Op, Shot, SockAddr};
pub use setup::{probe, Features, Unavailable};

use crate::selector::{bad_fd, Event, FdTable, Interest};

/// `user_data` of the driver's own requests (cancels, poll removals), whose
/// completions are not reported.
const INTERNAL: u64 = u64::MAX;

const IORING_ENTER_GETEVENTS: u32 = 1;
/// Completions copied out of the ring at a time (the ring's head moves on
/// after each batch, so the kernel can post more meanwhile).
const REAP_BATCH: usize = 256;
const IORING_ENTER_EXT_ARG: u32 = 8;

/// An op's identity: slot index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(u64);

impl OpId {
    fn new(index: u32, gen: u32) -> Self {
        OpId(((gen as u64) << 32) | index as u64)
    }
    fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    fn gen(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The `user_data` the kernel sees.
    pub fn raw(self) -> u64 {
        self.0
    }
}

enum Work<T> {
    /// A readiness poll armed for a registered descriptor; `current` is
    /// cleared when the registration changed and this poll was withdrawn.
    Watch { fd: RawFd, current: bool },
    /// A caller's op.
    User { op: Op, owner: T, cancelled: bool },
}

struct Slot<T> {
    gen: u32,
    work: Option<Work<T>>,
}

/// A registered descriptor's readiness state.
#[derive(Debug, Clone, Copy)]
struct Watch {
    armed: Option<OpId>,
    /// The poll mask `armed` waits for.
    mask: u32,
    /// Queued to be armed before the next wait.
    queued: bool,
}

/// A completion-based I/O driver on one io_uring (see the module docs).
pub struct Proactor<T> {
    ring: IoUring,
    features: Features,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    in_flight: usize,
    table: FdTable,
    watches: Vec<Option<Watch>>,
    arm: Vec<RawFd>,
    /// Entries that did not fit in the submission ring.
    backlog: VecDeque<squeue::Entry>,
    /// Completions copied out of the ring, reused from wait to wait.
    reaped: Vec<(u64, i32, u32)>,
    /// Provided-buffer rings, by group id.
    buf_rings: Vec<BufRing>,
    /// [`forks`] when the ring was made: another value means this is a
    /// forked child, which must not touch the ring.
    born: u64,
}

static FORKS: AtomicU64 = AtomicU64::new(0);
static AT_FORK: Once = Once::new();

extern "C" fn count_fork() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// How many times this process's ancestors forked into it (counted from
/// the first ring made): a cheap "am I a forked child?" without `getpid`.
fn forks() -> u64 {
    AT_FORK.call_once(|| {
        // SAFETY: registers a child handler that only bumps an atomic,
        // which is async-signal-safe as a fork child handler must be.
        unsafe { libc::pthread_atfork(None, None, Some(count_fork)) };
    });
    FORKS.load(Ordering::Relaxed)
}

/// What one wait needs, detached from its [`Proactor`]; `Send`, so the
/// owner can block without holding a borrow of the proactor.
#[derive(Debug)]
pub struct UringWaiter {
    fd: RawFd,
    to_submit: u32,
    /// Completions were already waiting when the wait was prepared.
    ready: bool,
    /// The kernel has work to post completions with (or an overflow to
    /// flush): a non-blocking wait must still enter.
    pending_work: bool,
}

impl<T> std::fmt::Debug for Proactor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proactor")
            .field("fd", &self.ring.as_raw_fd())
            .field("in_flight", &self.in_flight)
            .field("registered", &self.table.len())
            .finish()
    }
}

fn poll_mask(interest: Interest) -> u32 {
    let mut m = 0;
    if interest.is_readable() {
        m |= libc::POLLIN as u32;
    }
    if interest.is_writable() {
        m |= libc::POLLOUT as u32;
    }
    m
}

impl<T> Proactor<T> {
    /// A ring with room for `entries` submissions per enter (a power of two).
    pub fn new(entries: u32) -> Result<Self, Unavailable> {
        let (ring, features) = setup::build(entries)?;
        Ok(Proactor {
            ring,
            features,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            table: FdTable::default(),
            watches: Vec::new(),
            arm: Vec::new(),
            backlog: VecDeque::new(),
            reaped: Vec::new(),
            buf_rings: Vec::new(),
            born: forks(),
        })
    }

    /// What the kernel offered when the ring was made.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The ring's descriptor.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Ops submitted whose completion has not been reaped yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn foreign(&self) -> bool {
        FORKS.load(Ordering::Relaxed) != self.born
    }

    fn forked_error() -> io::Error {
        io::Error::other("this io_uring belongs to the parent process (fork)")
    }

    // Readiness, with the Selector contract.

    /// Watch `fd` for `interest`; events carry `token`.
    pub fn register(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        if fd < 0 {
            return Err(bad_fd(fd));
        }
        if self.table.contains(fd) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        self.table.set(fd, interest, token)?;
        let i = fd as usize;
        if i >= self.watches.len() {
            self.watches.resize(i + 1, None);
        }
        self.watches[i] = Some(Watch {
            armed: None,
            mask: 0,
            queued: false,
        });
        self.queue_arm(fd);
        Ok(())
    }

    /// Change what a registered `fd` is watched for.
    pub fn modify(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        if !self.table.contains(fd) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        self.table.set(fd, interest, token)?;
        // A new registration: the descriptor may be a new file by now.
        self.withdraw(fd);
        self.queue_arm(fd);
        Ok(())
    }

    /// Stop watching `fd`; its poll in flight is withdrawn.
    pub fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        if self.table.remove(fd).is_none() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        self.withdraw(fd);
        self.watches[fd as usize] = None;
        Ok(())
    }

    /// The registration of `fd`, if any.
    pub fn registration(&self, fd: RawFd) -> Option<(Interest, u64)> {
        self.table.get(fd)
    }

    /// Number of registered descriptors.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no descriptor is registered.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    fn watch_mut(&mut self, fd: RawFd) -> Option<&mut Watch> {
        self.watches.get_mut(fd as usize).and_then(Option::as_mut)
    }

    fn queue_arm(&mut self, fd: RawFd) {
        if let Some(w) = self.watch_mut(fd) {
            if !w.queued {
                w.queued = true;
                self.arm.push(fd);
            }
        }
    }

    /// Withdraw the poll armed for `fd`, if any: its completion will be
    /// ignored, and the kernel is asked to drop it.
    fn withdraw(&mut self, fd: RawFd) {
        let Some(id) = self.watch_mut(fd).and_then(|w| w.armed.take()) else {
            return;
        };
        if let Some(Slot {
            work: Some(Work::Watch { current, .. }),
            ..
        }) = self.slots.get_mut(id.index())
        {
            *current = false;
        }
        let e = opcode::PollRemove::new(id.raw())
            .build()
            .user_data(INTERNAL);
        self.push(e);
        // Hand the removal to the kernel now: the poll holds a reference to
        // the file, and the caller may close the descriptor next, expecting
        // the file to go (a listener that lingered would take connections
        // only to reset them).
        self.flush();
    }

    /// Hand the queued submissions to the kernel without waiting, and let
    /// it finish what they started at once (a removal releases its file in
    /// deferred task work, which only an enter that gets events runs).
    pub fn flush(&mut self) {
        if self.foreign() {
            return;
        }
        self.drain_backlog();
        let mut w = UringWaiter {
            fd: self.ring.as_raw_fd(),
            to_submit: self.ring.submission().len() as u32,
            ready: false,
            pending_work: true,
        };
        let _ = w.wait(Some(0.0));
    }

    fn arm_queued(&mut self) {
        let arm = std::mem::take(&mut self.arm);
        for &fd in &arm {
            let Some((interest, _)) = self.table.get(fd) else {
                continue;
            };
            let mask = poll_mask(interest);
            let Some(w) = self.watch_mut(fd) else {
                continue;
            };
            w.queued = false;
            if w.armed.is_some() {
                continue;
            }
            w.mask = mask;
            let id = self.alloc(Work::Watch { fd, current: true });
            if let Some(w) = self.watch_mut(fd) {
                w.armed = Some(id);
            }
            let e = opcode::PollAdd::new(types::Fd(fd), mask)
                .build()
                .user_data(id.raw());
            self.push(e);
        }
        self.arm = arm;
        self.arm.clear();
    }

    // Completion ops.

    /// Start `op`; its [`Completion`] brings `owner` and the op back.
    pub fn submit(&mut self, op: Op, owner: T) -> OpId {
        let id = self.alloc(Work::User {
            op,
            owner,
            cancelled: false,
        });
        let e = match &mut self.slots[id.index()].work {
            Some(Work::User { op, .. }) => op.entry(self.features.recv_poll_first),
            _ => unreachable!("a user op was just stored"),
        };
        self.push(e.user_data(id.raw()));
        id
    }

    /// Ask the kernel to cancel `id`. The op still completes (with
    /// `ECANCELED`, or with its result if it finished first) and its
    /// [`Completion`] is still reported. False if `id` is not in flight.
    pub fn cancel(&mut self, id: OpId) -> bool {
        match self.slots.get_mut(id.index()) {
            Some(Slot {
                gen,
                work: Some(Work::User { cancelled, .. }),
            }) if *gen == id.gen() => {
                if !*cancelled {
                    *cancelled = true;
                    let e = opcode::AsyncCancel::new(id.raw())
                        .build()
                        .user_data(INTERNAL);
                    self.push(e);
                }
                true
            }
            _ => false,
        }
    }

    /// The owner of op `id` while it is in flight (for a [`Shot`]).
    pub fn owner(&self, id: OpId) -> Option<&T> {
        match self.slots.get(id.index()) {
            Some(Slot {
                gen,
                work: Some(Work::User { owner, .. }),
            }) if *gen == id.gen() => Some(owner),
            _ => None,
        }
    }

    /// The owner of a [`Shot`] reaped into `shots` with `done`: the op's
    /// owner while it is in flight, or in its completion in `done` when the
    /// op ended in the same wait.
    pub fn shot_owner<'a>(&'a self, shot: &Shot, done: &'a [Completion<T>]) -> Option<&'a T> {
        self.owner(shot.id)
            .or_else(|| done.iter().find(|c| c.id == shot.id).map(|c| &c.owner))
    }

    // Provided-buffer rings.

    /// Register a pool of `count` buffers (a power of two, at most 32768)
    /// of `size` bytes each for [`Op::RecvMulti`], every one in the ring;
    /// returns its group id. Fails where the kernel has no buffer rings
    /// (before Linux 5.19).
    pub fn add_buf_ring(&mut self, count: u16, size: u32) -> io::Result<u16> {
        self.add_growing_buf_ring(count, count, size)
    }

    /// [`add_buf_ring`](Self::add_buf_ring) with only `initial` buffers in
    /// the ring at first; [`grow_buf_ring`](Self::grow_buf_ring) adds more.
    pub fn add_growing_buf_ring(&mut self, count: u16, initial: u16, size: u32) -> io::Result<u16> {
        if self.foreign() {
            return Err(Self::forked_error());
        }
        let group = u16::try_from(self.buf_rings.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let r = BufRing::new(group, count, initial, size)?;
        // SAFETY: the ring mapping lives in `buf_rings` until it is
        // unregistered (in Drop) or deliberately leaked.
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(r.ring_addr(), count, group, 0)?
        };
        self.buf_rings.push(r);
        Ok(group)
    }

    /// Provided-buffer ring `group`.
    pub fn buf_ring(&self, group: u16) -> Option<&BufRing> {
        self.buf_rings.get(group as usize)
    }

    /// The first `len` bytes of buffer `bid` of ring `group`, filled by a
    /// multishot recv and not yet recycled.
    pub fn buffer(&self, group: u16, bid: u16, len: usize) -> &[u8] {
        self.buf_rings[group as usize].get(bid, len)
    }

    /// Put more of pool `group`'s buffers in its ring (see
    /// [`BufRing::grow`]); false when none are left (or after a fork).
    pub fn grow_buf_ring(&mut self, group: u16) -> bool {
        if self.foreign() {
            return false;
        }
        self.buf_rings
            .get_mut(group as usize)
            .is_some_and(BufRing::grow)
    }

    /// Hand buffer `bid` of ring `group` back to the kernel.
    pub fn recycle(&mut self, group: u16, bid: u16) {
        if self.foreign() {
            return;
        }
        self.buf_rings[group as usize].recycle(bid);
    }

    /// True while `id` is in flight.
    pub fn is_in_flight(&self, id: OpId) -> bool {
        matches!(self.slots.get(id.index()), Some(s) if s.gen == id.gen() && s.work.is_some())
    }

    fn alloc(&mut self, work: Work<T>) -> OpId {
        self.in_flight += 1;
        if let Some(i) = self.free.pop() {
            let s = &mut self.slots[i as usize];
            s.work = Some(work);
            return OpId::new(i, s.gen);
        }
        let i = self.slots.len() as u32;
        self.slots.push(Slot {
            gen: 0,
            work: Some(work),
        });
        OpId::new(i, 0)
    }

    fn release(&mut self, index: usize) -> Option<Work<T>> {
        let s = &mut self.slots[index];
        let w = s.work.take();
        if w.is_some() {
            s.gen = s.gen.wrapping_add(1);
            self.free.push(index as u32);
            self.in_flight -= 1;
        }
        w
    }

    /// Queue one entry; a full submission ring is handed to the kernel
    /// first (without waiting).
    fn push(&mut self, e: squeue::Entry) {
        if self.foreign() {
            // The parent's ring is not mapped in this process: nothing can
            // be submitted to it (and the op will never complete).
            return;
        }
        if !self.backlog.is_empty() {
            self.backlog.push_back(e);
            return;
        }
        // SAFETY: every entry's buffers are owned by its slot (or, for the
        // driver's internal requests, need none) until its completion.
        if unsafe { self.ring.submission().push(&e) }.is_ok() {
            return;
        }
        if !self.foreign() && self.ring.submit().is_ok() {
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(e);
    }

    fn drain_backlog(&mut self) {
        if self.foreign() {
            return;
        }
        while let Some(e) = self.backlog.pop_front() {
            // SAFETY: as in `push`.
            if unsafe { self.ring.submission().push(&e) }.is_err() {
                self.backlog.push_front(e);
                break;
            }
        }
    }

    // Waiting.

    /// Nothing to hand to the kernel and nothing to reap: a wait that may
    /// not block would find nothing, so the caller can skip it.
    pub fn idle(&mut self) -> bool {
        if !self.arm.is_empty() || !self.backlog.is_empty() || self.foreign() {
            return false;
        }
        let sq = self.ring.submission();
        if !sq.is_empty() || sq.taskrun() || sq.cq_overflow() {
            return false;
        }
        drop(sq);
        self.ring.completion().is_empty()
    }

    /// Step 1 of a wait: arm the queued polls and detach what the system
    /// call needs. Every queued submission goes to the kernel with the wait.
    pub fn prepare_wait(&mut self) -> UringWaiter {
        if self.foreign() {
            // The ring's memory was not inherited (MADV_DONTFORK): touch
            // none of it; the wait reports the fork.
            return UringWaiter {
                fd: -1,
                to_submit: 0,
                ready: false,
                pending_work: false,
            };
        }
        self.arm_queued();
        self.drain_backlog();
        let (to_submit, pending_work) = {
            let sq = self.ring.submission();
            (sq.len() as u32, sq.taskrun() || sq.cq_overflow())
        };
        let ready = !self.ring.completion().is_empty();
        UringWaiter {
            fd: self.ring.as_raw_fd(),
            to_submit,
            ready,
            pending_work,
        }
    }

    /// Step 3 of a wait: report ready descriptors in `events`, finished
    /// ops in `done` and results of multishot ops that go on in `shots`
    /// (an op's shots always come before its completion); readiness polls
    /// that fired are queued to be armed again (level-triggered).
    pub fn finish_wait(
        &mut self,
        _waiter: UringWaiter,
        events: &mut Vec<Event>,
        done: &mut Vec<Completion<T>>,
        shots: &mut Vec<Shot>,
    ) {
        if self.foreign() {
            return;
        }
        let mut batch = std::mem::take(&mut self.reaped);
        loop {
            batch.clear();
            batch.extend(
                self.ring
                    .completion()
                    .take(REAP_BATCH)
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(ud, res, flags) in &batch {
                self.complete(ud, res, flags, events, done, shots);
            }
            if batch.len() < REAP_BATCH {
                break;
            }
        }
        self.reaped = batch;
    }

    fn complete(
        &mut self,
        ud: u64,
        res: i32,
        flags: u32,
        events: &mut Vec<Event>,
        done: &mut Vec<Completion<T>>,
        shots: &mut Vec<Shot>,
    ) {
        if ud == INTERNAL {
            return;
        }
        let id = OpId(ud);
        let index = id.index();
        match self.slots.get(index) {
            Some(s) if s.gen == id.gen() && s.work.is_some() => {}
            _ => return,
        }
        if let Some(Work::User { op, cancelled, .. }) = &mut self.slots[index].work {
            if let Op::RecvMulti { group, .. } = op {
                if io_uring::cqueue::buffer_select(flags).is_some() {
                    if let Some(r) = self.buf_rings.get_mut(*group as usize) {
                        r.taken();
                    }
                }
            }
            if op.is_multishot() && io_uring::cqueue::more(flags) {
                let result = op.finish(res);
                shots.push(Shot { id, result, flags });
                return;
            }
            // A send or write that the kernel took part of goes on from there.
            if res > 0 && op.advance(res as usize) && !*cancelled {
                let e = op.entry(self.features.recv_poll_first).user_data(ud);
                self.push(e);
                return;
            }
        }
        match self.release(index) {
            Some(Work::Watch { fd, current }) => {
                if !current {
                    return;
                }
                let Some(w) = self.watch_mut(fd) else {
                    return;
                };
                if w.armed != Some(id) {
                    return;
                }
                w.armed = None;
                // A descriptor that is not open is reported as poll(2)
                // reports POLLNVAL (Python's PollSelector: readable and
                // writable), on every wait until it is deregistered.
                let ev = match res {
                    r if r >= 0 => r as u32,
                    r if r == -libc::EBADF => libc::POLLNVAL as u32,
                    _ => {
                        self.queue_arm(fd);
                        return;
                    }
                };
                let read_like = ev & !(libc::POLLOUT as u32) != 0;
                let write_like = ev & !(libc::POLLIN as u32) != 0;
                if let Some(e) = self.table.event(fd, read_like, write_like) {
                    events.push(e);
                }
                self.queue_arm(fd);
            }
            Some(Work::User {
                op,
                owner,
                cancelled,
            }) => done.push(Completion {
                id,
                owner,
                result: op.finish(res),
                flags,
                cancelled,
                op,
            }),
            None => {}
        }
    }

    /// Wait for every op in flight to finish, asking the kernel to cancel
    /// them, for at most `timeout` seconds. Returns their completions;
    /// true in the second value when nothing is left in flight.
    pub fn cancel_all(&mut self, timeout: f64) -> (Vec<Completion<T>>, bool) {
        let mut done = Vec::new();
        if self.foreign() {
            return (done, false);
        }
        let mut events = Vec::new();
        let mut shots = Vec::new();
        // Every watch goes first, armed or only queued to be armed: a poll
        // armed now would never finish (a waker nobody writes to) and the
        // wait below would last the whole timeout.
        let watched: Vec<RawFd> = (0..self.watches.len())
            .filter(|&i| self.watches[i].is_some())
            .map(|i| i as RawFd)
            .collect();
        for fd in watched {
            let _ = self.deregister(fd);
        }
        self.arm.clear();
        for i in 0..self.slots.len() {
            let gen = self.slots[i].gen;
            match &self.slots[i].work {
                Some(Work::User { .. }) => {
                    self.cancel(OpId::new(i as u32, gen));
                }
                Some(Work::Watch { .. }) => {
                    // Withdrawn above or before, so its removal is queued;
                    // the cancel asks once more, in case the poll had not
                    // reached the kernel when the removal did.
                    let e = opcode::AsyncCancel::new(OpId::new(i as u32, gen).raw())
                        .build()
                        .user_data(INTERNAL);
                    self.push(e);
                }
                None => {}
            }
        }
        let deadline = crate::Clock::now(&crate::MonotonicClock) + timeout;
        while self.in_flight > 0 {
            let left = deadline - crate::Clock::now(&crate::MonotonicClock);
            if left <= 0.0 {
                break;
            }
            let mut w = self.prepare_wait();
            let _ = w.wait(Some(left.min(0.1)));
            self.finish_wait(w, &mut events, &mut done, &mut shots);
            for s in shots.drain(..) {
                // Nobody takes these any more. A multishot accept's shot
                // (the only kind without a buffer) is a new descriptor.
                if let (None, Ok(fd)) = (s.buffer(), s.result) {
                    // SAFETY: the kernel just accepted it for us, and
                    // nothing else has seen it.
                    unsafe { libc::close(fd as RawFd) };
                }
            }
        }
        let clean = self.in_flight == 0;
        (done, clean)
    }
}

impl<T> Drop for Proactor<T> {
    fn drop(&mut self) {
        if self.foreign() {
            // The parent's ring: its memory is not mapped here (and the
            // addresses may be reused by now), so do not unmap it; only the
            // descriptor is ours to close.
            let fd = self.ring.as_raw_fd();
            // SAFETY: ManuallyDrop-like: we give up the ring without running
            // its destructor, then close our copy of its descriptor once.
            unsafe {
                let ring = std::ptr::read(&self.ring);
                std::mem::forget(ring);
                libc::close(fd);
            }
            // Nor are the buffer rings' mappings (MADV_DONTFORK).
            std::mem::forget(std::mem::take(&mut self.buf_rings));
            // Buffers of ops the parent had in flight are this process's
            // copies, freed with the slots.
            return;
        }
        let (_done, clean) = self.cancel_all(1.0);
        if !clean {
            // The kernel may still write into the buffers of ops it did not
            // finish: keep them alive for ever rather than free them.
            let slots = std::mem::take(&mut self.slots);
            std::mem::forget(slots);
            std::mem::forget(std::mem::take(&mut self.buf_rings));
            return;
        }
        for r in &self.buf_rings {
            let _ = self.ring.submitter().unregister_buf_ring(r.group());
        }
    }
}

// SAFETY: the ring's raw pointers are only used through `&mut self`; the
// buffers are owned; `T` decides whether the owners may move threads.
unsafe impl<T: Send> Send for Proactor<T> {}

#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

impl UringWaiter {
    /// Step 2 of a wait: submit what was queued and block up to `timeout`
    /// seconds (`None`: no limit) for at least one completion. `EINTR` is
    /// returned as an error (`ErrorKind::Interrupted`).
    pub fn wait(&mut self, timeout: Option<f64>) -> io::Result<()> {
        if self.fd < 0 {
            return Err(Proactor::<()>::forked_error());
        }
        let timeout = if self.ready { Some(0.0) } else { timeout };
        let nonblocking = matches!(timeout, Some(t) if t <= 0.0);
        if nonblocking && self.to_submit == 0 && (self.ready || !self.pending_work) {
            return Ok(());
        }
        let ts;
        let arg;
        let (min_complete, flags, argp, argsz) = match timeout {
            Some(t) if t <= 0.0 => (0, IORING_ENTER_GETEVENTS, std::ptr::null(), 0),
            None => (1, IORING_ENTER_GETEVENTS, std::ptr::null(), 0),
            Some(t) => {
                let t = t.min(1e9);
                ts = libc::timespec {
                    tv_sec: t.trunc() as libc::time_t,
                    tv_nsec: ((t.fract() * 1e9) as libc::c_long).min(999_999_999),
                };
                arg = GeteventsArg {
                    sigmask: 0,
                    sigmask_sz: 0,
                    min_wait_usec: 0,
                    ts: &ts as *const libc::timespec as u64,
                };
                (
                    1,
                    IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                    &arg as *const GeteventsArg as *const libc::c_void,
                    std::mem::size_of::<GeteventsArg>(),
                )
            }
        };
        // SAFETY: io_uring_enter on our ring descriptor; `argp` is null or
        // points at `arg`, which (with the timespec it points at) lives
        // until the call returns.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                self.to_submit,
                min_complete,
                flags,
                argp,
                argsz,
            )
        };
        self.to_submit = 0;
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EBUSY) | Some(libc::EAGAIN) => Ok(()),
                _ => Err(e),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
