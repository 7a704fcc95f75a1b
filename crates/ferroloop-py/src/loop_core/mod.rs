//! `LoopCore`: the native half of `ferroloop.Loop`.
//!
//! It owns the ready queue, the timer queue, the engine (a native selector,
//! the proactor's io_uring, or a Python selector object) and the waker, and
//! runs the loop's passes (`pass.rs`); fd watching is in `fds.rs`. The Python class `ferroloop.Loop` derives from it
//! and from asyncio's `_UnixSelectorEventLoop`, which provides the rarely
//! used, intricate parts (tasks, futures, executors, async generators,
//! exception handlers, and the transports, which reach the loop through the
//! fd-watching methods here). The attributes that asyncio's code reads and
//! writes (`_debug`,
//! `_stopping`, `_closed`, `_thread_id`, `_current_handle`,
//! `slow_callback_duration`, `_clock_resolution`) are native descriptors, so
//! both halves see one state.
//!
//! Locking discipline: the state sits in a [`GilCell`]; every borrow ends
//! before Python code runs, and the GIL is released only around the blocking
//! wait, which works on a detached [`Waiter`].

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ferroloop_core::proactor::{Completion, Op, OpId, Proactor, Shot};
use ferroloop_core::{
    BackendKind, Cancel, Clock, Event, Interest, MonotonicClock, Scheduler, Selector, Waker,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyInt, PyString, PyTuple};

use crate::cell::GilCell;
use crate::errors::io_err;
use crate::handle::{Handle, TimerHandle};
use crate::proactor::stream::RingStreamCore;
use crate::proactor::Owner;

mod fds;
mod pass;
mod stats;

use fds::check_fileobj;
pub(crate) use fds::Trigger;
pub(crate) use pass::{NO_PANIC, PANIC_AT_PASS, PANIC_AT_TIMERS, PANIC_AT_WAIT, TEST_PANIC};
use stats::Stats;

const WAKER_TOKEN: u64 = u64::MAX;
/// `selectors.EVENT_READ` / `EVENT_WRITE`.
const EVENT_READ: u32 = 1;
const EVENT_WRITE: u32 = 2;

/// A queued handle, as the core's scheduler sees it.
///
/// A handle the running loop made for `call_soon`, `call_soon_threadsafe`,
/// `call_later` or `call_at` is hidden from the cyclic garbage collector
/// while it is queued ([`Item::fresh`]): the queue keeps it alive, so the
/// collector could find nothing to free in it, and with thousands queued
/// every collection walked them all. While the queue is the handle's only
/// owner the loop's own `__traverse__` visits what the handle refers to, as
/// if those references were the loop's. When the loop lets go of a handle
/// that something else still holds (`self.h = loop.call_later(...)`), the
/// handle is tracked again before the loop's reference goes ([`Drop`]), and
/// a cycle through it is collected as asyncio's would be; so is every
/// hidden handle still queued and held elsewhere when the loop stops
/// running ([`Item::show`]), so a stopped loop dropped unclosed in a cycle
/// with its callbacks is collected too.
pub struct Item(ManuallyDrop<Py<Handle>>);

/// Queued handles and timers from which a new handle's context copy is
/// hidden with it ([`Handle::hide_context`]): below this, collections find
/// few to walk, and hiding and showing it again would cost more.
const CROWDED: usize = 256;

impl Item {
    /// Queue a handle the loop has just made, out of the collector's sight
    /// while the loop runs (`st.hide_queued`); its context copy too when
    /// [`CROWDED`] or more callbacks and timers are queued.
    #[inline]
    fn fresh(h: Py<Handle>, st: &State) -> Self {
        if st.hide_queued {
            // SAFETY: the caller holds the GIL (it made the handle with a
            // `Python` token) and `h` is a live object of a GC type (pyo3
            // gives every pyclass with `__traverse__` Py_TPFLAGS_HAVE_GC);
            // `PyObject_GC_UnTrack` accepts tracked and untracked objects.
            unsafe { ffi::PyObject_GC_UnTrack(h.as_ptr().cast()) };
            if st.sched.ready_len() + st.sched.timers().len() >= CROWDED {
                h.get().hide_context();
            }
        }
        Item::new(h)
    }

    /// Queue `h` as it is (tracked or not).
    #[inline]
    pub(crate) fn new(h: Py<Handle>) -> Self {
        Item(ManuallyDrop::new(h))
    }

    /// Track the handle again if it is hidden and held elsewhere too.
    #[inline]
    fn show(&self) {
        let p = self.0.as_ptr();
        // SAFETY: items live only in the loop's state, which is reached with
        // the GIL held (a `GilCell` borrowed with a `Python` token, or the
        // loop's own dealloc and `__clear__`), so the GIL is held here, and
        // `p` is live (this item owns a reference). The check keeps
        // `PyObject_GC_Track` from seeing an already tracked object.
        unsafe {
            if ffi::Py_REFCNT(p) > 1 && ffi::PyObject_GC_IsTracked(p) == 0 {
                ffi::PyObject_GC_Track(p.cast());
                self.0.get().show_context();
            }
        }
    }

    /// True while the collector does not see the handle and the queue holds
    /// the only reference to it: then the loop's `__traverse__` speaks for
    /// the handle's references.
    #[inline]
    fn owned_untracked(&self) -> bool {
        let p = self.0.as_ptr();
        // SAFETY: `p` is live (this item owns a reference); both reads are
        // plain field reads, and the collector calls `__traverse__` (the one
        // caller) with the GIL held.
        unsafe { ffi::Py_REFCNT(p) == 1 && ffi::PyObject_GC_IsTracked(p) == 0 }
    }
}

/// Run `body`, then `after`, also when `body` panics; the panic then goes
/// on (pyo3 turns it into a Python exception at the method's boundary). The
/// borrows `body` held are released by the unwinding before `after` runs.
fn finally<R>(body: impl FnOnce() -> R, after: impl FnOnce()) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(r) => {
            after();
            r
        }
        Err(payload) => {
            after();
            std::panic::resume_unwind(payload)
        }
    }
}

impl Drop for Item {
    /// Before the loop's reference goes (just after this).
    fn drop(&mut self) {
        self.show();
        // SAFETY: the GIL is held (see `show`), so a plain decref releases
        // the reference, without the thread-local lookup a `Py`'s drop makes
        // first; the field is not used again.
        unsafe { ffi::Py_DECREF(ManuallyDrop::take(&mut self.0).into_ptr()) };
    }
}

impl Cancel for Item {
    #[inline]
    fn is_cancelled(&self) -> bool {
        self.0.get().is_cancelled()
    }
    #[inline]
    fn unscheduled(&self) {
        self.0.get().mark_unscheduled();
    }
}

enum Io {
    Native(Selector),
    /// The proactor engine: an io_uring, for fd watching (poll ops) and the
    /// completion-based transports' ops.
    Ring(Box<Proactor<Owner>>),
    /// A `selectors.BaseSelector` instance, driven through its Python API.
    Python(Py<PyAny>),
    Closed,
}

struct State {
    sched: Scheduler<Item>,
    io: Io,
    waker: Option<Waker>,
    readers: FdMap<RawFd, Py<Handle>>,
    writers: FdMap<RawFd, Py<Handle>>,
    /// The object each watched descriptor was first registered with, so a
    /// closed socket object (whose `fileno()` is now -1) can still be found,
    /// as Python's selectors find it.
    fileobjs: FdMap<RawFd, Py<PyAny>>,
    /// The sockets of asyncio's `sock_*` waits among the watchers (by
    /// descriptor and direction): a wait whose socket was closed under it is
    /// ended (see `fds.rs`), instead of hanging and blocking the number.
    sock_waits: FdMap<(RawFd, bool), Py<PyAny>>,
    /// When the loop next looks for such waits.
    next_sweep: f64,
    /// Descriptors whose native `sock_*` wait ended after its one-shot
    /// registration fired: epoll keeps them registered but disarmed, so the
    /// next wait re-arms them with one `EPOLL_CTL_MOD` (see `fds.rs`).
    /// Nothing else watches them.
    parked: FdSet,
    events: Vec<Event>,
    /// A wait's events were taken from the kernel and not all queued yet
    /// (see `pass.rs`): set between the two, so that a pass that finds it
    /// set knows events were dropped (a panic between) and has the
    /// edge-triggered registrations looked at again.
    events_in_hand: bool,
    /// How many times the loop has looked for I/O.
    polls: u64,
    /// Listeners taking one connection per readiness, with the look for
    /// I/O at which each last took one (see `_ff_accept`). Never pruned:
    /// one entry per descriptor number at most, and one left by a closed
    /// listener only starts its number's next listener one at a time.
    single_accept: FdMap<RawFd, u64>,
    completions: Vec<Completion<Owner>>,
    shots: Vec<Shot>,
    /// `reap_ring`'s lists, kept empty between passes so that a pass
    /// allocates none: multishot results with their owners, and the
    /// handles the pass's completions queue.
    owned_shots: Vec<(Py<RingStreamCore>, Shot)>,
    reaped_handles: Vec<Py<Handle>>,
    /// The next small write may go out by a direct `send` (until the next
    /// look at the ring; see `take_direct_send`).
    direct_send: bool,
    /// The ring's buffer pool for multishot recvs, made on first use.
    recv_pool: RecvPool,
    /// The look for I/O after which the pool's ring last grew.
    pool_grown_at: Option<u64>,
    thread_id: Option<u64>,
    /// Inside `_ff_run`: handles the loop makes are queued out of the
    /// collector's sight (see [`Item`]). Only then: a running loop is held by
    /// the frame running it, so it cannot be garbage while it hides them.
    hide_queued: bool,
    current_handle: Option<Py<PyAny>>,
    task_factory: Option<Py<PyAny>>,
    slow_callback_duration: f64,
    /// What was set when it was not a float: asyncio keeps any object there
    /// (and compares callbacks' durations with it in debug mode).
    slow_callback_obj: Option<Py<PyAny>>,
    clock_resolution: f64,
    stats: Stats,
}

/// The native event loop state and passes.
#[pyclass(module = "ferroloop._ferroloop", subclass, weakref, frozen)]
pub struct LoopCore {
    st: GilCell<State>,
    closed: AtomicBool,
    debug: AtomicBool,
    sleeping: AtomicBool,
    /// `time` was set on the instance: the loop reads its clock through
    /// `self.time()`, as asyncio does.
    instance_time: AtomicBool,
    /// Whether the class's `time` is the native one, cached with the type's
    /// version tag (`tag << 1 | overridden`); a change to the class or its
    /// bases (a subclass override, `mock.patch.object(type(loop), "time")`)
    /// changes the tag and the answer is looked up again.
    class_time: AtomicU64,
}

static BASE_EVENTS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static NATIVE_TIME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TASK_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FUTURE_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// asyncio.constants.SSL_HANDSHAKE_TIMEOUT and SSL_SHUTDOWN_TIMEOUT.
static SSL_TIMEOUTS: PyOnceLock<[Py<PyAny>; 2]> = PyOnceLock::new();

/// `asyncio.Task` / `asyncio.Future` (the C implementations when present).
fn asyncio_type<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("asyncio")?.getattr(name)?.unbind())
    })
    .map(|t| t.bind(py))
}

fn base_events(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    BASE_EVENTS
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("asyncio.base_events")?.unbind())
        })
        .map(|m| m.bind(py))
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

fn repr_of(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object>".into())
}

/// A map keyed by descriptor numbers (with a direction, for some), hashed
/// with one multiplication: the standard map's SipHash, made to resist
/// keys chosen by an attacker, cost some 450 instructions per look-up here,
/// and a watched descriptor is looked up several times per wait.
type FdMap<K, V> = HashMap<K, V, BuildHasherDefault<FdHasher>>;

/// A set of descriptors, hashed as [`FdMap`].
type FdSet = HashSet<RawFd, BuildHasherDefault<FdHasher>>;

/// The hasher of [`FdMap`] (the multiply-rotate step of rustc's FxHash).
#[derive(Default, Clone, Copy)]
struct FdHasher(u64);

impl Hasher for FdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

fn new_state(io: Io, waker: Option<Waker>) -> State {
    State {
        sched: Scheduler::new(),
        io,
        waker,
        readers: FdMap::default(),
        writers: FdMap::default(),
        fileobjs: FdMap::default(),
        sock_waits: FdMap::default(),
        next_sweep: 0.0,
        parked: FdSet::default(),
        events: Vec::new(),
        events_in_hand: false,
        polls: 0,
        single_accept: FdMap::default(),
        completions: Vec::new(),
        shots: Vec::new(),
        owned_shots: Vec::new(),
        reaped_handles: Vec::new(),
        direct_send: false,
        recv_pool: RecvPool::Untried,
        pool_grown_at: None,
        thread_id: None,
        hide_queued: false,
        current_handle: None,
        task_factory: None,
        slow_callback_duration: 0.1,
        slow_callback_obj: None,
        clock_resolution: MonotonicClock.resolution(),
        stats: Stats::new(MonotonicClock.now()),
    }
}

/// The proactor engine: a ring (made on first use in this thread) and the
/// waker, watched through a poll op.
fn ring_io() -> PyResult<(Io, Waker)> {
    let mut ring = Proactor::new(RING_ENTRIES).map_err(crate::errors::unavailable_err)?;
    let waker = Waker::new().map_err(io_err)?;
    ring.register(waker.fd(), Interest::READ, WAKER_TOKEN)
        .map_err(io_err)?;
    Ok((Io::Ring(Box::new(ring)), waker))
}

/// The proactor's pool of recv buffers, shared by its stream transports'
/// multishot recvs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RecvPool {
    Untried,
    Ready(u16),
    /// No multishot recv here (an old kernel, or turned off): transports
    /// read into buffers of their own.
    None,
}

/// One `bytes` of `parts` joined (filled once, not zeroed first).
fn concat_bytes<'py, 'a>(
    py: Python<'py>,
    parts: impl Iterator<Item = &'a [u8]> + Clone,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let total: usize = parts.clone().map(<[u8]>::len).sum();
    // SAFETY: a new bytes object of `total` uninitialised bytes, which the
    // loop below fills completely before anything else sees the object;
    // a null result is the raised MemoryError.
    unsafe {
        let obj = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), total as isize);
        let obj = Bound::from_owned_ptr_or_err(py, obj)?;
        let mut dst = pyo3::ffi::PyBytes_AsString(obj.as_ptr()).cast::<u8>();
        for p in parts {
            std::ptr::copy_nonoverlapping(p.as_ptr(), dst, p.len());
            dst = dst.add(p.len());
        }
        Ok(obj.cast_into_unchecked())
    }
}

/// Buffers in the pool, and their size: a busy pass on as many
/// connections takes one each, and `ENOBUFS` past that sends a
/// transport's next read to a buffer of its own. 4 MiB a loop at most,
/// touched as it is used.
const RECV_POOL_COUNT: u16 = 256;
/// Buffers in the pool's ring at first. The kernel writes every buffer in
/// the ring in turn, so this bounds what one connection makes resident
/// (512 KiB at most); an `ENOBUFS` under a connection reading small
/// messages doubles it, once per look for I/O (`ring_pool_ran_dry`).
/// Connections reading large messages do not grow it, as they go on with
/// reads of their own: with 64 at first, the 100 KiB echo with 50 clients
/// had a peak RSS 0.3 MiB above uvloop's; with 32, level or below.
const RECV_POOL_FIRST: u16 = 32;
pub(crate) const RECV_POOL_SIZE: u32 = 16 * 1024;

/// Submission-ring size: room for a pass's ops on a few hundred busy
/// connections; a fuller pass hands its ops to the kernel early.
const RING_ENTRIES: u32 = 1024;

fn native_io(kind: BackendKind) -> PyResult<(Io, Waker)> {
    let mut sel = Selector::new(kind).map_err(io_err)?;
    let waker = Waker::new().map_err(io_err)?;
    sel.register(waker.fd(), Interest::READ, WAKER_TOKEN)
        .map_err(io_err)?;
    Ok((Io::Native(sel), waker))
}

impl LoopCore {
    /// The next connection of listening socket `fd` (of family `AF_INET`,
    /// `AF_INET6` or `AF_UNIX`), as `_accept_nonblocking`, for an accept
    /// callback that has taken `taken` in this readiness already, with
    /// whether it is the readiness's last (take no more).
    ///
    /// Taking connections until `accept` fails costs a failing system call
    /// per readiness, for nothing when clients come one at a time. So a
    /// listener whose last readiness held just one takes one and then
    /// stops (its connection comes marked the last), as uvloop's does: the
    /// listener stays ready while more wait (level-triggered), and ready
    /// again at the very next look for I/O, it had more: then it takes
    /// until `accept` fails again, and goes back to one at a time once a
    /// readiness holds only one.
    pub(crate) fn _ff_accept(
        &self,
        py: Python<'_>,
        fd: RawFd,
        taken: usize,
    ) -> PyResult<Option<(i32, Py<PyAny>, bool)>> {
        // One at a time: this readiness's one connection is its last.
        let single = taken == 0 && {
            let st = self.st.borrow(py);
            st.single_accept
                .get(&fd)
                .is_some_and(|&at| st.polls > at + 1)
        };
        let got = crate::sockaddr::_accept_nonblocking(py, fd)?;
        let mut st = self.st.borrow_mut(py);
        let polls = st.polls;
        match got {
            Some((conn, addr)) => {
                if single {
                    st.single_accept.insert(fd, polls);
                }
                Ok(Some((conn, addr, single)))
            }
            None => {
                if taken == 1 {
                    st.single_accept.insert(fd, polls);
                } else {
                    st.single_accept.remove(&fd);
                }
                Ok(None)
            }
        }
    }

    #[inline]
    pub fn debug(&self, _py: Python<'_>) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// True when callbacks wait in the ready queue.
    pub(crate) fn has_ready(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).sched.ready_len() > 0
    }

    pub fn timer_cancelled(&self, py: Python<'_>) {
        self.st.borrow_mut(py).sched.timer_cancelled();
    }

    #[inline]
    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    fn debug_checks(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        thread: bool,
    ) -> PyResult<()> {
        if thread {
            slf.call_method0(pyo3::intern!(slf.py(), "_check_thread"))?;
        }
        slf.call_method1(
            pyo3::intern!(slf.py(), "_check_callback"),
            (callback, method),
        )?;
        Ok(())
    }

    fn push_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let core = slf.get();
        let h = Handle::new(
            py,
            callback.unbind(),
            args.unbind(),
            context.map(Bound::unbind),
            slf.clone().unbind(),
            core.debug(py).then_some(8),
            None,
        )?;
        let h = crate::freelist::new_handle(py, h)?;
        let mut st = core.st.borrow_mut(py);
        let item = Item::fresh(h.clone_ref(py), &st);
        st.sched.call_soon(item);
        Ok(h)
    }

    /// Wake the loop if it is blocked in its wait. Only the first caller
    /// after the loop went to sleep writes to the eventfd: the others find
    /// the flag already cleared.
    /// True when the loop's clock is not the native one: `time` set on the
    /// instance, or a class in the MRO defining another `time`.
    #[inline]
    fn time_overridden(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let core = slf.get();
        if core.instance_time.load(Ordering::Relaxed) {
            return Ok(true);
        }
        // SAFETY: `slf` is live, so `Py_TYPE` gives its live type object
        // (a borrowed pointer, used only here under the GIL); reading its
        // version tag is a plain field read.
        let tag = unsafe { (*ffi::Py_TYPE(slf.as_ptr())).tp_version_tag } as u64;
        let cached = core.class_time.load(Ordering::Relaxed);
        if tag != 0 && cached >> 1 == tag {
            return Ok(cached & 1 == 1);
        }
        Self::time_overridden_lookup(slf)
    }

    /// [`Self::time_overridden`] when the cached answer is stale: look the
    /// class's `time` up and cache the answer under its version tag.
    #[cold]
    fn time_overridden_lookup(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let core = slf.get();
        let tp = slf.get_type();
        let tp_ptr = tp.as_type_ptr();
        let py = slf.py();
        let native = NATIVE_TIME.get_or_try_init(py, || {
            Ok::<_, PyErr>(py.get_type::<LoopCore>().getattr("time")?.unbind())
        })?;
        let overridden = !tp.getattr(pyo3::intern!(py, "time"))?.is(native.bind(py));
        // The lookup above gives the type a valid tag if it had none.
        // SAFETY: `tp_ptr` is the live type object of `slf`; reading its
        // version tag is a plain field read under the GIL.
        let tag = unsafe { (*tp_ptr).tp_version_tag } as u64;
        core.class_time
            .store((tag << 1) | overridden as u64, Ordering::Relaxed);
        Ok(overridden)
    }

    /// `self.time()` when `time` is overridden and a queued timer needs the
    /// clock; `None` means the native clock is the loop's clock.
    #[inline(always)]
    fn overridden_now(slf: &Bound<'_, Self>, custom_time: bool) -> PyResult<Option<f64>> {
        if custom_time {
            Self::call_time(slf)
        } else {
            Ok(None)
        }
    }

    #[cold]
    fn call_time(slf: &Bound<'_, Self>) -> PyResult<Option<f64>> {
        let py = slf.py();
        if slf.get().st.borrow(py).sched.timers().is_empty() {
            return Ok(None);
        }
        Ok(Some(
            slf.call_method0(pyo3::intern!(py, "time"))?
                .extract::<f64>()?,
        ))
    }

    fn wake_if_sleeping(&self, py: Python<'_>) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            if let Some(w) = self.st.borrow(py).waker.as_ref() {
                let _wake_is_best_effort = w.wake();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn schedule_timer(
        slf: &Bound<'_, Self>,
        when: f64,
        when_obj: Option<Py<PyAny>>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        stack_depth: usize,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let core = slf.get();
        core.check_closed()?;
        if core.debug(py) {
            Self::debug_checks(slf, &callback, "call_at", true)?;
        }
        let h = Handle::new(
            py,
            callback.unbind(),
            args.unbind(),
            context.map(Bound::unbind),
            slf.clone().unbind(),
            core.debug(py).then_some(stack_depth),
            Some((when, when_obj)),
        )?;
        let init = PyClassInitializer::from(h).add_subclass(TimerHandle);
        let th = Bound::new(py, init)?;
        let base: Py<Handle> = th.clone().into_super().unbind();
        let mut st = core.st.borrow_mut(py);
        let item = Item::fresh(base, &st);
        st.sched.call_at(when, item);
        Ok(th.unbind())
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let (io, waker) = native_io(BackendKind::best())?;
        Ok(LoopCore {
            st: GilCell::new(new_state(io, Some(waker))),
            closed: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            instance_time: AtomicBool::new(false),
            class_time: AtomicU64::new(0),
        })
    }

    /// Choose the selector: None (best: epoll), "epoll", "poll", "select",
    /// or a `selectors.BaseSelector` instance. Only before the loop is used.
    fn _ff_set_selector(slf: &Bound<'_, Self>, selector: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let core = slf.get();
        core.check_closed()?;
        {
            let st = core.st.borrow(py);
            if !st.readers.is_empty() || !st.writers.is_empty() || st.thread_id.is_some() {
                return Err(PyRuntimeError::new_err(
                    "the selector can only be chosen before the loop is used",
                ));
            }
        }
        let (io, waker) = if selector.is_none() {
            native_io(BackendKind::best())?
        } else if let Ok(name) = selector.cast::<PyString>() {
            let name = name.to_str()?;
            let kind = BackendKind::from_name(name).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "unknown selector {name:?}: expected 'epoll', 'poll', 'select' or a selectors.BaseSelector instance"
                ))
            })?;
            native_io(kind)?
        } else {
            let base = py.import("selectors")?.getattr("BaseSelector")?;
            if !selector.is_instance(&base)? {
                return Err(PyTypeError::new_err(format!(
                    "selector must be None, 'epoll', 'poll', 'select' or a selectors.BaseSelector instance, got {}",
                    repr_of(selector)
                )));
            }
            let waker = Waker::new().map_err(io_err)?;
            selector.call_method1("register", (waker.fd(), EVENT_READ, py.None()))?;
            (Io::Python(selector.clone().unbind()), waker)
        };
        let old = {
            let mut st = core.st.borrow_mut(py);
            let old_io = std::mem::replace(&mut st.io, io);
            let old_waker = st.waker.replace(waker);
            st.parked.clear();
            (old_io, old_waker)
        };
        drop(old);
        Ok(())
    }

    /// Put the loop on the proactor engine (io_uring). Only before the loop
    /// is used; `OSError` naming the cause where io_uring is unavailable.
    fn _ff_use_ring(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let core = slf.get();
        core.check_closed()?;
        let (io, waker) = ring_io()?;
        let old = {
            let mut st = core.st.borrow_mut(py);
            (std::mem::replace(&mut st.io, io), st.waker.replace(waker))
        };
        drop(old);
        Ok(())
    }

    /// The backend the loop waits on: "epoll", "poll", "select", or
    /// "selectors:<class name>" for a Python selector object.
    #[getter]
    fn backend(&self, py: Python<'_>) -> PyResult<String> {
        let sel = match &self.st.borrow(py).io {
            Io::Native(s) => return Ok(s.kind().name().to_owned()),
            Io::Ring(_) => return Ok("io_uring".to_owned()),
            Io::Closed => return Ok("closed".to_owned()),
            Io::Python(s) => s.clone_ref(py),
        };
        Ok(format!("selectors:{}", sel.bind(py).get_type().name()?))
    }

    /// The Python selector object, when the loop runs on one.
    fn _ff_python_selector(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &self.st.borrow(py).io {
            Io::Python(s) => Some(s.clone_ref(py)),
            _ => None,
        }
    }

    /// What `fd` is watched for: `selectors.EVENT_READ` and/or `EVENT_WRITE`
    /// bits, 0 when it is not watched.
    fn _ff_watch_mask(&self, py: Python<'_>, fd: RawFd) -> u32 {
        let st = self.st.borrow(py);
        let r = if st.readers.contains_key(&fd) {
            EVENT_READ
        } else {
            0
        };
        let w = if st.writers.contains_key(&fd) {
            EVENT_WRITE
        } else {
            0
        };
        r | w
    }

    fn time(&self) -> f64 {
        MonotonicClock.now()
    }

    /// Tell the core that `time` is set on the instance (or no longer is).
    fn _ff_set_custom_time(&self, value: bool) {
        self.instance_time.store(value, Ordering::Relaxed);
    }

    fn get_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// A new `asyncio.Future` attached to this loop.
    pub(crate) fn create_future(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let kw = PyDict::new(py);
        kw.set_item(pyo3::intern!(py, "loop"), slf)?;
        Ok(asyncio_type(py, &FUTURE_TYPE, "Future")?
            .call((), Some(&kw))?
            .unbind())
    }

    /// Schedule a coroutine; returns its task. Without a task factory this
    /// builds an `asyncio.Task` directly; with one, in debug mode, or with
    /// keyword arguments of newer Pythons (e.g. `eager_start`), it defers to
    /// asyncio's own `create_task`, so the factory protocol, task naming and
    /// source tracebacks are asyncio's.
    #[pyo3(signature = (coro, *, name = None, context = None, **kwargs))]
    fn create_task(
        slf: &Bound<'_, Self>,
        coro: &Bound<'_, PyAny>,
        name: Option<&Bound<'_, PyAny>>,
        context: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let core = slf.get();
        core.check_closed()?;
        let has_factory = core.st.borrow(py).task_factory.is_some();
        let extra = kwargs.is_some_and(|k| !k.is_empty());
        if has_factory || extra || core.debug(py) {
            let kw = match kwargs {
                Some(k) => k.copy()?,
                None => PyDict::new(py),
            };
            kw.set_item("name", name)?;
            kw.set_item("context", context)?;
            return Ok(base_events(py)?
                .getattr("BaseEventLoop")?
                .getattr("create_task")?
                .call((slf, coro), Some(&kw))?
                .unbind());
        }
        let kw = PyDict::new(py);
        kw.set_item(pyo3::intern!(py, "loop"), slf)?;
        if let Some(n) = name {
            kw.set_item(pyo3::intern!(py, "name"), n)?;
        }
        if let Some(c) = context {
            kw.set_item(pyo3::intern!(py, "context"), c)?;
        }
        Ok(asyncio_type(py, &TASK_TYPE, "Task")?
            .call((coro,), Some(&kw))?
            .unbind())
    }

    #[pyo3(signature = (callback, *args, context = None))]
    pub(crate) fn call_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let core = slf.get();
        core.check_closed()?;
        if core.debug(slf.py()) {
            Self::debug_checks(slf, &callback, "call_soon", true)?;
        }
        Self::push_soon(slf, callback, args, context)
    }

    /// asyncio's internal `_call_soon(callback, args, context)`, which some
    /// stdlib and third-party code calls directly.
    #[pyo3(signature = (callback, args, context = None))]
    fn _call_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::push_soon(slf, callback, args, context)
    }

    #[pyo3(signature = (callback, *args, context = None))]
    pub(crate) fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let core = slf.get();
        core.check_closed()?;
        if core.debug(py) {
            Self::debug_checks(slf, &callback, "call_soon_threadsafe", false)?;
        }
        let h = Self::push_soon(slf, callback, args, context)?;
        core.wake_if_sleeping(py);
        Ok(h)
    }

    #[pyo3(signature = (delay, callback, *args, context = None))]
    pub(crate) fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let py = slf.py();
        let now = if Self::time_overridden(slf)? {
            slf.call_method0(pyo3::intern!(py, "time"))?
        } else {
            MonotonicClock.now().into_pyobject(py)?.into_any()
        };
        // asyncio computes `self.time() + delay`: exact ints and floats take
        // the fast path, anything else gets Python's addition and its errors.
        let exact =
            delay.is_exact_instance_of::<PyFloat>() || delay.is_exact_instance_of::<PyInt>();
        let when = if exact {
            now.extract::<f64>()? + delay.extract::<f64>()?
        } else {
            now.add(delay)?.extract::<f64>()?
        };
        Self::schedule_timer(slf, when, None, callback, args, context, 7)
    }

    #[pyo3(signature = (when, callback, *args, context = None))]
    pub(crate) fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let when_f: f64 = when.extract()?;
        // asyncio's `when()` returns the object it was given.
        let keep = (!when.is_exact_instance_of::<PyFloat>()).then(|| when.clone().unbind());
        Self::schedule_timer(slf, when_f, keep, callback, args, context, 8)
    }

    fn _timer_handle_cancelled(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) {
        if let Ok(h) = handle.cast::<Handle>() {
            if let Some(t) = &h.get().timer {
                if t.scheduled.load(Ordering::Relaxed) {
                    self.timer_cancelled(py);
                }
            }
        }
    }

    /// `_add_callback`: queue an existing handle unless it is cancelled.
    pub(crate) fn _add_callback(&self, py: Python<'_>, handle: &Bound<'_, Handle>) {
        if !handle.get().is_cancelled() {
            self.st
                .borrow_mut(py)
                .sched
                .call_soon(Item::new(handle.clone().unbind()));
        }
    }

    fn _add_callback_signalsafe(&self, py: Python<'_>, handle: &Bound<'_, Handle>) {
        self._add_callback(py, handle);
        self._write_to_self(py);
    }

    /// Wake the loop from any thread.
    fn _write_to_self(&self, py: Python<'_>) {
        if let Some(w) = self.st.borrow(py).waker.as_ref() {
            let _wake_is_best_effort = w.wake();
        }
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_watch(slf, fd, callback, args, false)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_watch(slf, fd, callback, args, true)
    }

    /// Watch `fd` for reading (level-triggered); replaces a previous reader.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        check_fileobj(fd)?;
        Self::add_watch(slf, fd, callback, args, false).map(drop)
    }

    /// Watch `fd` for writing (level-triggered); replaces a previous writer.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        check_fileobj(fd)?;
        Self::add_watch(slf, fd, callback, args, true).map(drop)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::unwatch(slf, fd, false)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::unwatch(slf, fd, true)
    }

    /// Stop watching `fd` for reading; True if it was watched.
    fn remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        check_fileobj(fd)?;
        Self::unwatch(slf, fd, false)
    }

    /// Stop watching `fd` for writing; True if it was watched.
    fn remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        check_fileobj(fd)?;
        Self::unwatch(slf, fd, true)
    }

    /// Stop after the current pass.
    fn stop(&self, py: Python<'_>) {
        self.st.borrow_mut(py).sched.stop();
    }

    fn is_running(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).thread_id.is_some()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// One pass of the loop.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let core = slf.get();
        let py = slf.py();
        core.st.borrow_mut(py).stats.start(MonotonicClock.now());
        finally(
            || Self::run_once_impl(slf),
            || core.st.borrow_mut(py).stats.stop(MonotonicClock.now()),
        )
    }

    /// Run passes until `stop()`; the caller sets up and tears down the
    /// running-loop state (see `ferroloop.Loop.run_forever`).
    fn _ff_run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let core = slf.get();
        {
            let mut st = core.st.borrow_mut(py);
            st.stats.start(MonotonicClock.now());
            st.hide_queued = true;
        }
        // Also when a pass panics (a bug): the panic then reaches Python as
        // an exception with the loop as it would be after an error.
        finally(
            || loop {
                Self::run_once_impl(slf)?;
                if core.st.borrow(py).sched.stopping() {
                    break Ok(());
                }
            },
            || {
                let mut st = core.st.borrow_mut(py);
                st.stats.stop(MonotonicClock.now());
                st.hide_queued = false;
                st.sched.iter().for_each(Item::show);
            },
        )
    }

    /// A listener's readiness: `crate::accepted::accept_connection`
    /// (`Loop._accept_connection` is this method).
    #[pyo3(signature = (
        protocol_factory,
        sock,
        sslcontext = None,
        server = None,
        backlog = None,
        ssl_handshake_timeout = None,
        ssl_shutdown_timeout = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn _ff_accept_connection(
        slf: &Bound<'_, Self>,
        protocol_factory: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        sslcontext: Option<&Bound<'_, PyAny>>,
        server: Option<&Bound<'_, PyAny>>,
        backlog: Option<&Bound<'_, PyAny>>,
        ssl_handshake_timeout: Option<&Bound<'_, PyAny>>,
        ssl_shutdown_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let none = py.None().into_bound(py);
        let backlog_default;
        let backlog = match backlog {
            Some(b) => b,
            None => {
                backlog_default = 100i32.into_pyobject(py)?.into_any();
                &backlog_default
            }
        };
        // asyncio's defaults, read once as its signature reads them. (A
        // plain server passes None for both: looking them up on every
        // connection was an import per connection.)
        let [hs_default, sd_default] = SSL_TIMEOUTS.get_or_try_init(py, || {
            let constants = py.import("asyncio.constants")?;
            Ok::<_, PyErr>([
                constants.getattr("SSL_HANDSHAKE_TIMEOUT")?.unbind(),
                constants.getattr("SSL_SHUTDOWN_TIMEOUT")?.unbind(),
            ])
        })?;
        let hs = ssl_handshake_timeout.unwrap_or(hs_default.bind(py));
        let sd = ssl_shutdown_timeout.unwrap_or(sd_default.bind(py));
        crate::accepted::accept_connection(
            slf,
            protocol_factory,
            sock,
            sslcontext.unwrap_or(&none),
            server.unwrap_or(&none),
            backlog,
            hs,
            sd,
        )
    }

    /// The loop's statistics, for `ferroloop.Loop.stats()`: passes,
    /// callbacks run, seconds running and waiting, the last and the recent
    /// largest timer lag, the recent slowest callback (its description and
    /// seconds), and the ready and scheduled callbacks now.
    #[allow(clippy::type_complexity)]
    fn _ff_stats(
        &self,
        py: Python<'_>,
    ) -> (
        u64,
        u64,
        f64,
        f64,
        f64,
        f64,
        Option<String>,
        Option<f64>,
        usize,
        usize,
    ) {
        let mut st = self.st.borrow_mut(py);
        let (a, b, c, d, e, f, g, h) = st.stats.snapshot(MonotonicClock.now());
        (
            a,
            b,
            c,
            d,
            e,
            f,
            g,
            h,
            st.sched.ready_len(),
            st.sched.timers().len(),
        )
    }

    /// For tests: how many of the proactor's recv pool buffers are in its
    /// ring (it grows from `RECV_POOL_FIRST` to `RECV_POOL_COUNT`), and how
    /// many transports hold; None before a transport read from it, and on
    /// the selector loop.
    fn _ff_recv_pool(&self, py: Python<'_>) -> Option<(u16, usize)> {
        let st = self.st.borrow(py);
        let (RecvPool::Ready(g), Io::Ring(ring)) = (&st.recv_pool, &st.io) else {
            return None;
        };
        ring.buf_ring(*g).map(|r| (r.posted(), r.lent()))
    }

    /// The native part of `close()`: drop queued callbacks, close the
    /// selector and the waker.
    fn _ff_close(&self, py: Python<'_>) -> PyResult<()> {
        self.closed.store(true, Ordering::Relaxed);
        let (items, timers, io, waker, readers, writers) = {
            let mut st = self.st.borrow_mut(py);
            let (items, timers) = st.sched.take_all();
            let io = std::mem::replace(&mut st.io, Io::Closed);
            let waker = st.waker.take();
            let readers = std::mem::take(&mut st.readers);
            let writers = std::mem::take(&mut st.writers);
            let fileobjs = std::mem::take(&mut st.fileobjs);
            let socks = std::mem::take(&mut st.sock_waits);
            st.parked.clear();
            (
                items,
                timers,
                io,
                waker,
                readers,
                (writers, fileobjs, socks),
            )
        };
        drop((items, timers, readers, writers, waker));
        match io {
            Io::Python(sel) => {
                sel.bind(py).call_method0("close")?;
            }
            Io::Ring(mut ring) => {
                // Every op in flight is cancelled and waited for (the kernel
                // may write into their buffers until it answers); their
                // owners are dropped here, with the GIL.
                let (done, ring) = py.detach(move || (ring.cancel_all(1.0).0, ring));
                drop(done);
                drop(ring);
            }
            _ => {}
        }
        Ok(())
    }

    // Attributes shared with asyncio.BaseEventLoop's Python code.

    #[getter(_debug)]
    fn debug_attr(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    #[setter(_debug)]
    fn set_debug_attr(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.debug.store(value.is_truthy()?, Ordering::Relaxed);
        Ok(())
    }

    #[getter]
    fn _closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    #[setter(_closed)]
    fn set_closed_attr(&self, value: bool) {
        self.closed.store(value, Ordering::Relaxed);
    }

    #[getter]
    fn _stopping(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).sched.stopping()
    }

    #[setter(_stopping)]
    fn set_stopping_attr(&self, py: Python<'_>, value: bool) {
        let mut st = self.st.borrow_mut(py);
        if value {
            st.sched.stop();
        } else {
            st.sched.clear_stopping();
        }
    }

    #[getter]
    fn _thread_id(&self, py: Python<'_>) -> Option<u64> {
        self.st.borrow(py).thread_id
    }

    #[setter(_thread_id)]
    fn set_thread_id_attr(&self, py: Python<'_>, value: Option<u64>) {
        self.st.borrow_mut(py).thread_id = value;
    }

    #[getter]
    fn _current_handle(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .borrow(py)
            .current_handle
            .as_ref()
            .map(|h| h.clone_ref(py))
    }

    #[setter(_current_handle)]
    fn set_current_handle_attr(&self, py: Python<'_>, value: Option<Py<PyAny>>) {
        let old = std::mem::replace(&mut self.st.borrow_mut(py).current_handle, value);
        drop(old);
    }

    #[getter]
    fn _task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .borrow(py)
            .task_factory
            .as_ref()
            .map(|f| f.clone_ref(py))
    }

    #[setter(_task_factory)]
    fn set_task_factory_attr(&self, py: Python<'_>, value: Option<Py<PyAny>>) {
        let value = value.filter(|v| !v.is_none(py));
        let old = std::mem::replace(&mut self.st.borrow_mut(py).task_factory, value);
        drop(old);
    }

    #[getter]
    fn slow_callback_duration(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let st = self.st.borrow(py);
        match &st.slow_callback_obj {
            Some(o) => Ok(o.clone_ref(py)),
            None => Ok(PyFloat::new(py, st.slow_callback_duration)
                .into_any()
                .unbind()),
        }
    }

    #[setter]
    fn set_slow_callback_duration(&self, py: Python<'_>, value: &Bound<'_, PyAny>) {
        let (secs, obj) = match value.cast::<PyFloat>() {
            Ok(f) => (f.value(), None),
            Err(_) => match value.extract::<f64>() {
                // An int: stored as asyncio stores it, compared as a float.
                Ok(f) if value.is_instance_of::<PyInt>() => (f, Some(value.clone().unbind())),
                _ => (f64::NAN, Some(value.clone().unbind())),
            },
        };
        let old = {
            let mut st = self.st.borrow_mut(py);
            st.slow_callback_duration = secs;
            std::mem::replace(&mut st.slow_callback_obj, obj)
        };
        drop(old);
    }

    #[getter]
    fn _clock_resolution(&self, py: Python<'_>) -> f64 {
        self.st.borrow(py).clock_resolution
    }

    #[setter(_clock_resolution)]
    fn set_clock_resolution_attr(&self, py: Python<'_>, value: f64) {
        self.st.borrow_mut(py).clock_resolution = value;
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        let Some(st) = self.st.gc_borrow() else {
            return Ok(());
        };
        for item in st.sched.iter() {
            if item.owned_untracked() {
                item.0.get().visit_contents(&visit)?;
            } else {
                visit.call(&*item.0)?;
            }
        }
        for h in st.readers.values().chain(st.writers.values()) {
            visit.call(h)?;
        }
        for o in st.fileobjs.values().chain(st.sock_waits.values()) {
            visit.call(o)?;
        }
        if let Io::Python(sel) = &st.io {
            visit.call(sel)?;
        }
        visit.call(&st.current_handle)?;
        visit.call(&st.task_factory)?;
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.st.gc_borrow_mut().map(|mut st| {
            let (items, timers) = st.sched.take_all();
            (
                items,
                timers,
                std::mem::take(&mut st.readers),
                std::mem::take(&mut st.writers),
                std::mem::take(&mut st.fileobjs),
                std::mem::take(&mut st.sock_waits),
                std::mem::take(&mut st.parked),
                st.current_handle.take(),
                st.task_factory.take(),
            )
        });
        drop(taken);
    }
}

impl LoopCore {
    /// Start a completion op on the loop's ring; `None` when the loop does
    /// not run on one or is closed.
    pub(crate) fn ring_submit(&self, py: Python<'_>, op: Op, owner: Owner) -> Option<OpId> {
        match &mut self.st.borrow_mut(py).io {
            Io::Ring(ring) => Some(ring.submit(op, owner)),
            _ => None,
        }
    }

    /// The buffer group for multishot recvs on this loop's ring, registered
    /// on first use; `None` where there is none (not a ring, a kernel
    /// without multishot recv, `FERROLOOP_RECV_MULTISHOT=0`).
    pub(crate) fn ring_recv_group(&self, py: Python<'_>) -> Option<u16> {
        let mut st = self.st.borrow_mut(py);
        let st = &mut *st;
        match st.recv_pool {
            RecvPool::Ready(g) => return Some(g),
            RecvPool::None => return None,
            RecvPool::Untried => {}
        }
        let Io::Ring(ring) = &mut st.io else {
            return None;
        };
        let wanted = ring.features().recv_multishot
            && std::env::var_os("FERROLOOP_RECV_MULTISHOT").is_none_or(|v| v != "0");
        st.recv_pool = match wanted
            .then(|| ring.add_growing_buf_ring(RECV_POOL_COUNT, RECV_POOL_FIRST, RECV_POOL_SIZE))
        {
            Some(Ok(g)) => RecvPool::Ready(g),
            _ => RecvPool::None,
        };
        match st.recv_pool {
            RecvPool::Ready(g) => Some(g),
            _ => None,
        }
    }

    /// The bytes of pool buffers `chunks` (buffer id, length) as one
    /// `bytes`, the buffers handed back to the kernel.
    pub(crate) fn ring_take_bytes<'py>(
        &self,
        py: Python<'py>,
        group: u16,
        chunks: &[(u16, u32)],
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let mut st = self.st.borrow_mut(py);
        let Io::Ring(ring) = &mut st.io else {
            return Err(closed_error());
        };
        let data = match chunks {
            &[(bid, n)] => Ok(crate::link::bytes_from(
                py,
                ring.buffer(group, bid, n as usize),
            )),
            _ => concat_bytes(
                py,
                chunks
                    .iter()
                    .map(|&(bid, n)| ring.buffer(group, bid, n as usize)),
            ),
        };
        for &(bid, _) in chunks {
            ring.recycle(group, bid);
        }
        data
    }

    /// Append the bytes of pool buffers `chunks` to `out`, the buffers
    /// handed back to the kernel.
    pub(crate) fn ring_take_into(
        &self,
        py: Python<'_>,
        group: u16,
        chunks: &[(u16, u32)],
        out: &mut Vec<u8>,
    ) {
        if let Io::Ring(ring) = &mut self.st.borrow_mut(py).io {
            for &(bid, n) in chunks {
                out.extend_from_slice(ring.buffer(group, bid, n as usize));
                ring.recycle(group, bid);
            }
        }
    }

    /// Pool `group` ran dry (`ENOBUFS`): the reads of a pass wanted more
    /// buffers than its ring had, so, if `grow`, put more of the pool in it
    /// while some are left, once per look for I/O (a pass whose reads
    /// found it empty many times needs it doubled, not grown to the whole
    /// pool). True when the kernel has buffers to fill now.
    pub(crate) fn ring_pool_ran_dry(&self, py: Python<'_>, group: u16, grow: bool) -> bool {
        let mut st = self.st.borrow_mut(py);
        let st = &mut *st;
        let grow = grow && st.pool_grown_at != Some(st.polls);
        match &mut st.io {
            Io::Ring(ring) => {
                let grew = grow && ring.grow_buf_ring(group);
                if grew {
                    st.pool_grown_at = Some(st.polls);
                }
                grew || ring
                    .buf_ring(group)
                    .is_some_and(|r| r.lent() < r.posted() as usize)
            }
            _ => false,
        }
    }

    /// May a small write be sent at once by a `send` call rather than
    /// queued as an op for the pass's `io_uring_enter`? Yes for the first
    /// one after a look at the ring that found at most one finished op (a
    /// pass serving one connection: the reply goes out without an op, a
    /// completion and a `_write_done`); no in a busier pass, whose sends
    /// share one system call.
    pub(crate) fn take_direct_send(&self, py: Python<'_>) -> bool {
        std::mem::take(&mut self.st.borrow_mut(py).direct_send)
    }

    /// Hand pool buffers back to the kernel unread.
    pub(crate) fn ring_recycle(&self, py: Python<'_>, group: u16, chunks: &[(u16, u32)]) {
        if let Io::Ring(ring) = &mut self.st.borrow_mut(py).io {
            for &(bid, _) in chunks {
                ring.recycle(group, bid);
            }
        }
    }

    /// Ask the kernel to cancel an op; its completion still comes.
    pub(crate) fn ring_cancel(&self, py: Python<'_>, id: OpId) {
        if let Io::Ring(ring) = &mut self.st.borrow_mut(py).io {
            ring.cancel(id);
        }
    }

    /// `_remove_reader(fd)` / `_remove_writer(fd)` by descriptor number,
    /// for the native transports: nothing on a closed loop, as asyncio.
    pub(crate) fn remove_fd(slf: &Bound<'_, Self>, fd: RawFd, write: bool) -> PyResult<bool> {
        if slf.get().closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        Self::unwatch_fd(slf, fd, write)
    }

    pub(crate) fn add_watch(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        write: bool,
    ) -> PyResult<Py<Handle>> {
        Self::add_watch_as(slf, fd, callback, args, write, Trigger::Level)
    }

    /// [`Self::add_watch`], registered as `trigger` says.
    pub(crate) fn add_watch_as(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        write: bool,
        trigger: Trigger,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let core = slf.get();
        core.check_closed()?;
        let h = crate::freelist::new_handle(
            py,
            Handle::new(
                py,
                callback.clone().unbind(),
                args.clone().unbind(),
                None,
                slf.clone().unbind(),
                core.debug(py).then_some(10),
                None,
            )?,
        )?;
        let sock = fds::sock_wait_socket(slf, &callback, &args)?;
        Self::watch(slf, fd, write, h.clone_ref(py), sock, trigger)?;
        Ok(h)
    }
}
