//! A complete event loop for Rust programs.
//!
//! It follows asyncio's rules (see [`crate::scheduler`]) with closures for
//! callbacks. Every callback receives `&mut EventLoop`, through which it
//! schedules more work, watches descriptors, cancels handles or stops the loop.
//! Other threads talk to the loop through a [`Remote`].
//!
//! A loop waits on one of two engines ([`LoopKind`]): a readiness
//! [`Selector`] (asyncio's `SelectorEventLoop`), or an io_uring
//! [`Proactor`] (asyncio's `ProactorEventLoop`), made by
//! [`EventLoop::proactor`]. Everything but the wait is the same code for
//! both: the scheduler, timers, descriptor watching (the proactor has the
//! selector's level-triggered readiness contract), the [`Remote`] and its
//! waker. A proactor loop also runs completion ops: [`EventLoop::submit`]
//! hands an [`Op`] with its buffer to the kernel, and the closure given with
//! it runs in the pass that reaps its [`Completion`], getting the op and its
//! buffer back.
//!
//! ```
//! use ferroloop_core::EventLoop;
//! let mut lp = EventLoop::new().unwrap();
//! let remote = lp.remote();
//! std::thread::spawn(move || remote.call_soon_threadsafe(|lp| lp.stop()));
//! lp.call_later(60.0, |_| unreachable!("stopped before"));
//! lp.run_forever().unwrap();
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock::{Clock, MonotonicClock};
use crate::proactor::{Completion, Features, Op, OpId, Proactor};
use crate::scheduler::{Cancel, Scheduler};
use crate::selector::{BackendKind, Event, Interest, Selector};
use crate::waker::Waker;

type Once<C> = Box<dyn FnOnce(&mut EventLoop<C>)>;
type Repeat<C> = Rc<RefCell<dyn FnMut(&mut EventLoop<C>)>>;
type SendOnce<C> = Box<dyn FnOnce(&mut EventLoop<C>) + Send>;
type OpDone<C> = Box<dyn FnOnce(&mut EventLoop<C>, Completion<()>)>;

/// Submission entries of the ring a proactor loop makes by default.
pub const DEFAULT_RING_ENTRIES: u32 = 256;

const WAKER_TOKEN: u64 = u64::MAX;

#[derive(Debug, Default)]
struct HandleState {
    cancelled: Cell<bool>,
    scheduled: Cell<bool>,
}

/// A scheduled callback; [`EventLoop::cancel`] stops it from running.
#[derive(Debug, Clone)]
pub struct Handle {
    state: Rc<HandleState>,
    when: Option<f64>,
}

impl Handle {
    /// True once cancelled.
    pub fn cancelled(&self) -> bool {
        self.state.cancelled.get()
    }

    /// The deadline of a timer handle, in loop time.
    pub fn when(&self) -> Option<f64> {
        self.when
    }
}

enum Work<C: Clock> {
    Once(Once<C>),
    Repeat(Repeat<C>),
    /// A completion op's callback with what it gets.
    Done(OpDone<C>, Completion<()>),
}

struct Job<C: Clock> {
    state: Rc<HandleState>,
    work: Work<C>,
}

impl<C: Clock> Cancel for Job<C> {
    fn is_cancelled(&self) -> bool {
        self.state.cancelled.get()
    }
    fn unscheduled(&self) {
        self.state.scheduled.set(false);
    }
}

struct Watch<C: Clock> {
    reader: Option<(Rc<HandleState>, Repeat<C>)>,
    writer: Option<(Rc<HandleState>, Repeat<C>)>,
}

struct Shared<C: Clock> {
    queue: Mutex<Vec<SendOnce<C>>>,
    waker: Waker,
    sleeping: AtomicBool,
    closed: AtomicBool,
}

/// A handle for other threads: schedule callbacks and stop the loop.
pub struct Remote<C: Clock = MonotonicClock> {
    shared: Arc<Shared<C>>,
}

impl<C: Clock> Clone for Remote<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

// SAFETY: `Shared` holds a Mutex of `Send` closures, a Waker (an fd) and atomics;
// the clock type parameter is only a marker here and no `C` value is shared.
unsafe impl<C: Clock> Send for Remote<C> {}
// SAFETY: as above; every field of `Shared` is usable from several threads.
unsafe impl<C: Clock> Sync for Remote<C> {}

impl<C: Clock> Remote<C> {
    /// Schedule `f` on the loop from any thread. Returns false if the loop
    /// was dropped (the callback is then dropped too).
    pub fn call_soon_threadsafe(&self, f: impl FnOnce(&mut EventLoop<C>) + Send + 'static) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        match self.shared.queue.lock() {
            Ok(mut q) => q.push(Box::new(f)),
            Err(_) => return false,
        }
        if self.shared.sleeping.load(Ordering::SeqCst) {
            let _woken = self.shared.waker.wake();
        }
        true
    }

    /// Stop the loop after its current pass.
    pub fn stop(&self) -> bool {
        self.call_soon_threadsafe(|lp| lp.stop())
    }
}

/// What a loop waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopKind {
    /// A readiness selector on this backend.
    Selector(BackendKind),
    /// An io_uring proactor: completion ops, and descriptors watched with
    /// one-shot poll ops re-armed on every wait (level-triggered).
    Proactor,
}

impl LoopKind {
    /// A selector loop on the best backend.
    pub const fn best() -> Self {
        LoopKind::Selector(BackendKind::best())
    }

    /// `"epoll"`, `"poll"`, `"select"` or `"io_uring"`.
    pub const fn name(self) -> &'static str {
        match self {
            LoopKind::Selector(b) => b.name(),
            LoopKind::Proactor => "io_uring",
        }
    }

    /// Parse a name given by [`name`](Self::name) (or `"proactor"`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "io_uring" | "proactor" => Some(LoopKind::Proactor),
            other => BackendKind::from_name(other).map(LoopKind::Selector),
        }
    }
}

/// The engine a loop waits on; the rest of the loop does not care which.
enum Engine<C: Clock> {
    Selector(Selector),
    /// Boxed: the ring's state is several hundred bytes.
    Proactor(Box<Proactor<OpDone<C>>>),
}

impl<C: Clock> Engine<C> {
    fn register(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        match self {
            Engine::Selector(s) => s.register(fd, interest, token),
            Engine::Proactor(p) => p.register(fd, interest, token),
        }
    }

    fn modify(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        match self {
            Engine::Selector(s) => s.modify(fd, interest, token),
            Engine::Proactor(p) => p.modify(fd, interest, token),
        }
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        match self {
            Engine::Selector(s) => s.deregister(fd),
            Engine::Proactor(p) => p.deregister(fd),
        }
    }

    /// Wait up to `timeout`; ready descriptors go to `events`, finished ops
    /// to `done`.
    fn wait(
        &mut self,
        events: &mut Vec<Event>,
        done: &mut Vec<Completion<OpDone<C>>>,
        timeout: Option<f64>,
    ) -> io::Result<()> {
        match self {
            Engine::Selector(s) => s.select(events, timeout),
            Engine::Proactor(p) => {
                let mut w = p.prepare_wait();
                let res = w.wait(timeout);
                // `submit` refuses multishot ops, so no shots come.
                let mut shots = Vec::new();
                p.finish_wait(w, events, done, &mut shots);
                debug_assert!(shots.is_empty());
                res
            }
        }
    }

    fn proactor(&mut self) -> io::Result<&mut Proactor<OpDone<C>>> {
        match self {
            Engine::Proactor(p) => Ok(p),
            Engine::Selector(s) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "completion ops need a proactor loop, not a {} selector loop",
                    s.kind().name()
                ),
            )),
        }
    }
}

/// An event loop driven by closures, on a selector or a proactor.
pub struct EventLoop<C: Clock = MonotonicClock> {
    clock: C,
    resolution: f64,
    sched: Scheduler<Job<C>>,
    engine: Engine<C>,
    watches: HashMap<RawFd, Watch<C>>,
    shared: Arc<Shared<C>>,
    events: Vec<Event>,
    done: Vec<Completion<OpDone<C>>>,
    /// Completion ops submitted and not reaped (the driver's own count also
    /// has the readiness polls).
    ops: usize,
    running: bool,
}

impl EventLoop<MonotonicClock> {
    /// A loop on the best backend and the monotonic clock.
    pub fn new() -> io::Result<Self> {
        Self::with_backend(BackendKind::best(), MonotonicClock)
    }

    /// A proactor loop (io_uring, [`DEFAULT_RING_ENTRIES`]) on the monotonic
    /// clock. Where io_uring cannot be used the error says why; its inner
    /// error is the driver's [`Unavailable`](crate::proactor::Unavailable).
    pub fn proactor() -> io::Result<Self> {
        Self::with_proactor(DEFAULT_RING_ENTRIES, MonotonicClock)
    }
}

impl<C: Clock> EventLoop<C> {
    /// A loop on the given backend and clock.
    pub fn with_backend(kind: BackendKind, clock: C) -> io::Result<Self> {
        Self::with_engine(Engine::Selector(Selector::new(kind)?), clock)
    }

    /// A proactor loop on a ring of `entries` submission entries (a power
    /// of two) and the given clock.
    pub fn with_proactor(entries: u32, clock: C) -> io::Result<Self> {
        let ring = Proactor::new(entries).map_err(|u| io::Error::new(u.error.kind(), u))?;
        Self::with_engine(Engine::Proactor(Box::new(ring)), clock)
    }

    /// A loop of the given kind and clock.
    pub fn with_kind(kind: LoopKind, clock: C) -> io::Result<Self> {
        match kind {
            LoopKind::Selector(b) => Self::with_backend(b, clock),
            LoopKind::Proactor => Self::with_proactor(DEFAULT_RING_ENTRIES, clock),
        }
    }

    fn with_engine(mut engine: Engine<C>, clock: C) -> io::Result<Self> {
        let waker = Waker::new()?;
        engine.register(waker.fd(), Interest::READ, WAKER_TOKEN)?;
        let resolution = clock.resolution();
        Ok(Self {
            clock,
            resolution,
            sched: Scheduler::new(),
            engine,
            watches: HashMap::new(),
            shared: Arc::new(Shared {
                queue: Mutex::new(Vec::new()),
                waker,
                sleeping: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
            events: Vec::new(),
            done: Vec::new(),
            ops: 0,
            running: false,
        })
    }

    /// What this loop waits on.
    pub fn kind(&self) -> LoopKind {
        match &self.engine {
            Engine::Selector(s) => LoopKind::Selector(s.kind()),
            Engine::Proactor(_) => LoopKind::Proactor,
        }
    }

    /// The selector backend this loop waits on. A proactor loop reports
    /// [`BackendKind::Poll`], whose readiness rules its poll ops follow (a
    /// descriptor that is not open registers and is reported readable);
    /// [`kind`](Self::kind) tells the two apart.
    pub fn backend(&self) -> BackendKind {
        match &self.engine {
            Engine::Selector(s) => s.kind(),
            Engine::Proactor(_) => BackendKind::Poll,
        }
    }

    /// The loop's time, in seconds.
    pub fn time(&self) -> f64 {
        self.clock.now()
    }

    /// True while [`run_forever`](Self::run_forever) runs.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// A handle for other threads.
    pub fn remote(&self) -> Remote<C> {
        Remote {
            shared: Arc::clone(&self.shared),
        }
    }

    fn job(&mut self, work: Work<C>, scheduled: bool) -> (Job<C>, Rc<HandleState>) {
        let state = Rc::new(HandleState {
            cancelled: Cell::new(false),
            scheduled: Cell::new(scheduled),
        });
        (
            Job {
                state: Rc::clone(&state),
                work,
            },
            state,
        )
    }

    /// Run `f` in the next pass.
    pub fn call_soon(&mut self, f: impl FnOnce(&mut Self) + 'static) -> Handle {
        let (job, state) = self.job(Work::Once(Box::new(f)), false);
        self.sched.call_soon(job);
        Handle { state, when: None }
    }

    /// Run `f` at loop time `when`.
    pub fn call_at(&mut self, when: f64, f: impl FnOnce(&mut Self) + 'static) -> Handle {
        let (job, state) = self.job(Work::Once(Box::new(f)), true);
        self.sched.call_at(when, job);
        Handle {
            state,
            when: Some(when),
        }
    }

    /// Run `f` after `delay` seconds.
    pub fn call_later(&mut self, delay: f64, f: impl FnOnce(&mut Self) + 'static) -> Handle {
        let when = self.time() + delay;
        self.call_at(when, f)
    }

    /// Cancel a handle: its callback will not run.
    pub fn cancel(&mut self, h: &Handle) {
        if h.state.cancelled.replace(true) {
            return;
        }
        if h.state.scheduled.get() {
            self.sched.timer_cancelled();
        }
    }

    fn watch(
        &mut self,
        fd: RawFd,
        write: bool,
        f: impl FnMut(&mut Self) + 'static,
    ) -> io::Result<()> {
        let state = Rc::new(HandleState::default());
        let cb: Repeat<C> = Rc::new(RefCell::new(f));
        let w = self.watches.entry(fd).or_insert(Watch {
            reader: None,
            writer: None,
        });
        let (had_r, had_w) = (w.reader.is_some(), w.writer.is_some());
        let interest = Interest::new(had_r || !write, had_w || write);
        let res = if had_r || had_w {
            self.engine.modify(fd, interest, fd as u64)
        } else {
            self.engine.register(fd, interest, fd as u64)
        };
        if let Err(e) = res {
            if !had_r && !had_w {
                self.watches.remove(&fd);
            }
            return Err(e);
        }
        let w = self.watches.get_mut(&fd).expect("inserted above");
        let slot = if write { &mut w.writer } else { &mut w.reader };
        if let Some((old, _)) = slot.replace((state, cb)) {
            old.cancelled.set(true);
        }
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd, write: bool) -> io::Result<bool> {
        let Some(w) = self.watches.get_mut(&fd) else {
            return Ok(false);
        };
        let slot = if write { &mut w.writer } else { &mut w.reader };
        let Some((state, _)) = slot.take() else {
            return Ok(false);
        };
        state.cancelled.set(true);
        let interest = Interest::new(w.reader.is_some(), w.writer.is_some());
        if interest.is_empty() {
            self.watches.remove(&fd);
            self.engine.deregister(fd)?;
        } else {
            self.engine.modify(fd, interest, fd as u64)?;
        }
        Ok(true)
    }

    /// Call `f` whenever `fd` is readable (level-triggered), replacing any
    /// reader callback it had.
    pub fn add_reader(&mut self, fd: RawFd, f: impl FnMut(&mut Self) + 'static) -> io::Result<()> {
        self.watch(fd, false, f)
    }

    /// Call `f` whenever `fd` is writable (level-triggered).
    pub fn add_writer(&mut self, fd: RawFd, f: impl FnMut(&mut Self) + 'static) -> io::Result<()> {
        self.watch(fd, true, f)
    }

    /// Stop watching `fd` for reading; true if it was watched.
    pub fn remove_reader(&mut self, fd: RawFd) -> io::Result<bool> {
        self.unwatch(fd, false)
    }

    /// Stop watching `fd` for writing; true if it was watched.
    pub fn remove_writer(&mut self, fd: RawFd) -> io::Result<bool> {
        self.unwatch(fd, true)
    }

    /// Start a completion op (proactor loops only). `f` runs in the pass
    /// that reaps its completion, with the op and its buffers; also after
    /// [`cancel_op`](Self::cancel_op), which the completion then reports
    /// (`cancelled`, and `ECANCELED` unless the op finished first). Ops still
    /// in flight when the loop is dropped are cancelled and their callbacks
    /// dropped unrun. Submissions go to the kernel with the next wait.
    ///
    /// Fails with `Unsupported` on a selector loop (`f` and `op` are
    /// dropped), and with `InvalidInput` for a multishot op
    /// ([`Op::RecvMulti`], [`Op::AcceptMulti`]), whose results need more than a callback that
    /// runs once (use a [`Proactor`] directly).
    pub fn submit(
        &mut self,
        op: Op,
        f: impl FnOnce(&mut Self, Completion<()>) + 'static,
    ) -> io::Result<OpId> {
        if op.is_multishot() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "multishot ops are not run by EventLoop::submit",
            ));
        }
        let id = self.engine.proactor()?.submit(op, Box::new(f));
        self.ops += 1;
        Ok(id)
    }

    /// Ask the kernel to cancel op `id`; its callback still runs once the
    /// kernel answers. False if `id` is not in flight (its completion may
    /// have been reaped already, its callback queued for this pass).
    pub fn cancel_op(&mut self, id: OpId) -> bool {
        match &mut self.engine {
            Engine::Proactor(p) => p.cancel(id),
            Engine::Selector(_) => false,
        }
    }

    /// Completion ops submitted whose completion was not reaped yet.
    pub fn ops_in_flight(&self) -> usize {
        self.ops
    }

    /// What the kernel gave the ring, on a proactor loop.
    pub fn proactor_features(&self) -> Option<&Features> {
        match &self.engine {
            Engine::Proactor(p) => Some(p.features()),
            Engine::Selector(_) => None,
        }
    }

    /// Stop after the current pass.
    pub fn stop(&mut self) {
        self.sched.stop();
    }

    fn queue_watch(&mut self, fd: RawFd, write: bool) {
        let Some(w) = self.watches.get(&fd) else {
            return;
        };
        let slot = if write { &w.writer } else { &w.reader };
        if let Some((state, cb)) = slot {
            if !state.cancelled.get() {
                let job = Job {
                    state: Rc::clone(state),
                    work: Work::Repeat(Rc::clone(cb)),
                };
                self.sched.call_soon(job);
            }
        }
    }

    fn take_remote(&mut self) -> usize {
        let batch = match self.shared.queue.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return 0,
        };
        let n = batch.len();
        for f in batch {
            let (job, _) = self.job(Work::Once(f), false);
            self.sched.call_soon(job);
        }
        n
    }

    /// One pass: wait for I/O or the next timer, then run what is ready.
    pub fn run_once(&mut self) -> io::Result<()> {
        self.take_remote();
        let clock = &self.clock;
        let mut purged = Vec::new();
        let mut timeout = self.sched.poll_timeout(|| clock.now(), &mut purged);
        drop(purged);
        self.shared.sleeping.store(true, Ordering::SeqCst);
        if self.take_remote() > 0 {
            timeout = Some(0.0);
        }
        let mut events = std::mem::take(&mut self.events);
        let mut done = std::mem::take(&mut self.done);
        let res = self.engine.wait(&mut events, &mut done, timeout);
        self.shared.sleeping.store(false, Ordering::SeqCst);
        // Finished ops run whatever the wait returned: the driver has given
        // them back, and only their callbacks can take their buffers.
        self.ops -= done.len();
        for c in done.drain(..) {
            let (f, c) = c.take_owner();
            let (job, _) = self.job(Work::Done(f, c), false);
            self.sched.call_soon(job);
        }
        self.done = done;
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                events.clear();
                self.events = events;
                return Err(e);
            }
        }
        for ev in events.drain(..) {
            if ev.token == WAKER_TOKEN {
                self.shared.waker.drain();
                continue;
            }
            if ev.readable {
                self.queue_watch(ev.fd, false);
            }
            if ev.writable {
                self.queue_watch(ev.fd, true);
            }
        }
        self.events = events;
        self.take_remote();
        let end = self.clock.now() + self.resolution;
        self.sched.collect_due(end);
        let n = self.sched.begin_pass();
        for _ in 0..n {
            let Some(job) = self.sched.pop_ready() else {
                break;
            };
            if job.is_cancelled() {
                continue;
            }
            match job.work {
                Work::Once(f) => f(self),
                Work::Repeat(cb) => (cb.borrow_mut())(self),
                Work::Done(f, c) => f(self, c),
            }
        }
        Ok(())
    }

    /// Run passes until [`stop`](Self::stop) is called.
    pub fn run_forever(&mut self) -> io::Result<()> {
        if self.running {
            return Err(io::Error::other("This event loop is already running"));
        }
        self.running = true;
        let res = loop {
            if let Err(e) = self.run_once() {
                break Err(e);
            }
            if self.sched.stopping() {
                break Ok(());
            }
        };
        self.sched.clear_stopping();
        self.running = false;
        res
    }
}

impl<C: Clock> Drop for EventLoop<C> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Ok(mut q) = self.shared.queue.lock() {
            q.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn log() -> Rc<RefCell<Vec<u32>>> {
        Rc::new(RefCell::new(Vec::new()))
    }

    #[test]
    fn call_soon_is_fifo_and_stop_finishes_the_pass() {
        let mut lp = EventLoop::new().unwrap();
        let l = log();
        for i in 0..3 {
            let l = l.clone();
            lp.call_soon(move |lp| {
                l.borrow_mut().push(i);
                if i == 0 {
                    lp.stop();
                }
            });
        }
        lp.run_forever().unwrap();
        assert_eq!(*l.borrow(), vec![0, 1, 2]);
        assert!(!lp.is_running());
    }

    #[test]
    fn callbacks_scheduled_during_a_pass_run_in_the_next() {
        let mut lp = EventLoop::new().unwrap();
        let l = log();
        let l2 = l.clone();
        lp.call_soon(move |lp| {
            l2.borrow_mut().push(1);
            let l3 = l2.clone();
            lp.call_soon(move |_| l3.borrow_mut().push(3));
            lp.stop();
        });
        let l4 = l.clone();
        lp.call_soon(move |_| l4.borrow_mut().push(2));
        lp.run_forever().unwrap();
        assert_eq!(*l.borrow(), vec![1, 2]);
        lp.call_soon(|lp| lp.stop());
        lp.run_forever().unwrap();
        assert_eq!(*l.borrow(), vec![1, 2, 3]);
    }

    #[test]
    fn timers_with_manual_clock_and_cancellation() {
        let clock = ManualClock::new(100.0);
        let mut lp = EventLoop::with_backend(BackendKind::Poll, clock.clone()).unwrap();
        let l = log();
        let (a, b) = (l.clone(), l.clone());
        lp.call_at(101.0, move |_| a.borrow_mut().push(1));
        let h = lp.call_at(100.5, move |_| b.borrow_mut().push(2));
        lp.cancel(&h);
        assert!(h.cancelled());
        assert_eq!(lp.sched.timers().cancelled_count(), 1);
        lp.run_once().unwrap();
        assert!(l.borrow().is_empty());
        clock.set(101.0);
        lp.run_once().unwrap();
        assert_eq!(*l.borrow(), vec![1]);
    }

    #[test]
    fn remote_wakes_a_blocked_loop() {
        let mut lp = EventLoop::new().unwrap();
        let remote = lp.remote();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            assert!(remote.stop());
        });
        let started = std::time::Instant::now();
        lp.run_forever().unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        t.join().unwrap();
    }

    #[test]
    fn reader_is_level_triggered_until_removed() {
        let mut lp = EventLoop::new().unwrap();
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: writes one byte from a live buffer to our own socket.
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        let hits = Rc::new(Cell::new(0));
        let h = hits.clone();
        let fd = fds[0];
        lp.add_reader(fd, move |lp| {
            h.set(h.get() + 1);
            if h.get() == 3 {
                lp.remove_reader(fd).unwrap();
                lp.stop();
            }
        })
        .unwrap();
        lp.run_forever().unwrap();
        assert_eq!(hits.get(), 3);
        assert!(!lp.remove_reader(fd).unwrap());
        for fd in fds {
            // SAFETY: closing descriptors this test created.
            unsafe { libc::close(fd) };
        }
    }
}
