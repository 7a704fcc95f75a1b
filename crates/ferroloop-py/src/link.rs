//! What every native transport shares: its link to the loop and the
//! protocol ([`Link`]), byte views of Python buffers, and the error rules of
//! asyncio's transports. The protocol-facing write half ([`WriteBuf`] and the
//! water marks in [`Flow`]) is pure Rust, in `ferroloop_core::transport`.
//! `selector/sel.rs` adds the socket transports' shared rules; the
//! I/O-facing halves are `selector/{stream,datagram,pipe}.rs` (readiness)
//! and `proactor/stream.rs` (ring ops).
//!
//! Locking discipline is the loop's: state sits in a [`GilCell`], and no
//! borrow is held across a call into Python (protocol callbacks may call
//! `write`, `close` or `pause_reading` on the same transport).

use std::cell::RefCell;
use std::ffi::c_int;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyTypeError, PyValueError};

pub use ferroloop_core::transport::{Flow, WriteBuf};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyTuple};

use crate::cell::GilCell;
use crate::loop_core::{LoopCore, Trigger};

/// Bytes asked of `recv` per read, as asyncio's `max_size`.
pub const MAX_READ: usize = 256 * 1024;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
pub const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

thread_local! {
    /// Where reads land before they are copied into a `bytes` of the exact
    /// size; one per thread, as every loop runs on one thread.
    pub static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_READ].into_boxed_slice());
}

thread_local! {
    /// A `bytes` object a protocol callback handed back untouched, kept to
    /// carry the next read of its length (see [`recycle`]).
    static SPARE: std::cell::Cell<Option<Py<PyBytes>>> = const { std::cell::Cell::new(None) };
}

/// Keep `data` for the next read of its length if no one but the caller
/// holds it any more: a protocol's `data_received` that copied the bytes
/// (a parser, `bytearray.extend`, a `write` sent at once) leaves it so.
/// Nothing outside can see the object again, so filling it anew is as good
/// as a new one, without the `malloc` and `free` of one per read.
pub fn recycle(data: Bound<'_, PyBytes>) {
    // SAFETY: `data` is a live object.
    let sole = unsafe { ffi::Py_REFCNT(data.as_ptr()) } == 1;
    if sole && data.is_exact_instance_of::<PyBytes>() && (2..=MAX_READ).contains(&ffi_size(&data)) {
        // The old spare, if any, is freed here with the GIL held.
        let _gone_at_thread_exit = SPARE.try_with(|s| s.set(Some(data.unbind())));
    }
}

/// The spare `bytes` if it has `len` bytes, its cached hash forgotten.
fn take_spare(py: Python<'_>, len: usize) -> Option<Bound<'_, PyBytes>> {
    let spare = SPARE.try_with(|s| s.take()).ok().flatten()?.into_bound(py);
    if ffi_size(&spare) != len {
        let _gone_at_thread_exit = SPARE.try_with(|s| s.set(Some(spare.unbind())));
        return None;
    }
    // SAFETY: the spare is an exact `bytes` only this thread's caller
    // holds (checked in `recycle`, and the slot gave up its reference);
    // its hash field is plain data, -1 meaning "not computed".
    #[allow(deprecated)]
    unsafe {
        (*spare.as_ptr().cast::<ffi::PyBytesObject>()).ob_shash = -1;
    }
    Some(spare)
}

fn ffi_size(b: &Bound<'_, PyBytes>) -> usize {
    // SAFETY: `b` is a live `bytes`, a variable-size object.
    unsafe { ffi::Py_SIZE(b.as_ptr()) as usize }
}

/// A `bytes` holding a copy of `data`: the spare object when it has that
/// length, else a new one.
pub fn bytes_from<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    match take_spare(py, data.len()) {
        Some(b) => {
            // SAFETY: `b` is unshared (see `take_spare`) and its buffer
            // holds exactly `data.len()` bytes, which cannot overlap `data`.
            unsafe {
                let dst = ffi::PyBytes_AS_STRING(b.as_ptr()).cast::<u8>().cast_mut();
                std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len());
            }
            b
        }
        None => PyBytes::new(py, data),
    }
}

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static BUFFERED_PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    LOGGER
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("asyncio.log")?.getattr("logger")?.unbind())
        })
        .map(|l| l.bind(py))
}

pub fn is_buffered_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = protocol.py();
    let cls = BUFFERED_PROTOCOL.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("asyncio")?.getattr("BufferedProtocol")?.unbind())
    })?;
    protocol.is_instance(cls.bind(py))
}

/// SystemExit and KeyboardInterrupt leave a callback at once, as asyncio's
/// `except (SystemExit, KeyboardInterrupt): raise` clauses make them.
pub fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

pub fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A contiguous byte view of a bytes-like object, released on drop.
pub struct ByteView {
    view: ffi::Py_buffer,
}

impl ByteView {
    pub fn new(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Self> {
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        let flags = if writable {
            ffi::PyBUF_WRITABLE
        } else {
            ffi::PyBUF_SIMPLE
        };
        // SAFETY: `obj` is a live object; PyObject_GetBuffer fills `view` on
        // success (returns 0) and leaves an exception set on failure.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: the call succeeded, so `view` is initialised.
        let view = unsafe { view.assume_init() };
        Ok(ByteView { view })
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.view.len <= 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: a PyBUF_SIMPLE (or WRITABLE) buffer is `len` contiguous
        // bytes at `buf`, valid until the view is released in `drop`.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }

    pub fn as_mut_ptr(&mut self) -> (*mut u8, usize) {
        (self.view.buf as *mut u8, self.view.len.max(0) as usize)
    }
}

impl Drop for ByteView {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and
        // is released exactly once; the GIL is held wherever a view lives.
        unsafe { ffi::PyBuffer_Release(&mut self.view) };
    }
}

/// A transport's link to its loop, its protocol and the Python transport
/// object the protocol sees. The loop and protocol references are dropped
/// when the connection is lost, as asyncio drops them.
pub struct Link {
    pub fd: RawFd,
    pub lp: Option<Py<LoopCore>>,
    pub protocol: Option<Py<PyAny>>,
    pub transport: Option<Py<PyAny>>,
}

pub struct LinkCell(GilCell<Link>);

impl LinkCell {
    pub fn new(
        fd: RawFd,
        lp: &Bound<'_, LoopCore>,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
    ) -> Self {
        LinkCell(GilCell::new(Link {
            fd,
            lp: Some(lp.clone().unbind()),
            protocol: Some(protocol.clone().unbind()),
            transport: Some(transport.clone().unbind()),
        }))
    }

    #[inline]
    pub fn fd(&self, py: Python<'_>) -> RawFd {
        self.0.borrow(py).fd
    }

    pub fn lp<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.0.borrow(py).lp.as_ref().map(|l| l.bind(py).clone())
    }

    pub fn transport_obj(&self, py: Python<'_>) -> Py<PyAny> {
        self.0
            .borrow(py)
            .transport
            .as_ref()
            .map_or_else(|| py.None(), |t| t.clone_ref(py))
    }

    pub fn protocol_obj(&self, py: Python<'_>) -> Py<PyAny> {
        self.0
            .borrow(py)
            .protocol
            .as_ref()
            .map_or_else(|| py.None(), |p| p.clone_ref(py))
    }

    pub fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.0.borrow(py).protocol.as_ref().map(|p| p.clone_ref(py))
    }

    /// Replace the protocol; the old one is dropped after the borrow.
    pub fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        let old = self
            .0
            .borrow_mut(protocol.py())
            .protocol
            .replace(protocol.clone().unbind());
        drop(old);
    }

    /// Drop the loop, protocol and transport references (end of
    /// `_call_connection_lost`). Nothing needs them afterwards, and without
    /// the transport reference the Python transport and its core form no
    /// cycle, so a closed transport is freed as soon as the user drops it.
    pub fn release(&self, py: Python<'_>) {
        let taken = {
            let mut l = self.0.borrow_mut(py);
            (l.lp.take(), l.protocol.take(), l.transport.take())
        };
        drop(taken);
    }

    pub fn debug(&self, py: Python<'_>) -> bool {
        self.lp(py).is_some_and(|l| l.get().debug(py))
    }

    /// `logger.<level>("%r <what>", transport)`.
    pub fn log(&self, py: Python<'_>, level: &str, what: &str) -> PyResult<()> {
        let t = self.transport_obj(py);
        logger(py)?.call_method1(level, (format!("%r {what}"), t))?;
        Ok(())
    }

    /// `loop._remove_reader(fd)` / `_remove_writer(fd)`.
    pub fn remove_watch(&self, py: Python<'_>, write: bool) -> PyResult<()> {
        let (lp, fd) = {
            let l = self.0.borrow(py);
            (l.lp.as_ref().map(|l| l.clone_ref(py)), l.fd)
        };
        if let Some(lp) = lp {
            LoopCore::remove_fd(lp.bind(py), fd, write)?;
        }
        Ok(())
    }

    /// `loop._add_reader(fd, owner.<method>)` (or the writer).
    pub fn add_watch(
        &self,
        owner: &Bound<'_, PyAny>,
        method: &Bound<'_, pyo3::types::PyString>,
        write: bool,
    ) -> PyResult<()> {
        self.watch_as(owner, method, write, Trigger::Level)
    }

    /// `loop._add_reader(fd, owner.<method>)`, edge-triggered where the
    /// loop is on epoll (see `loop_core::Trigger::Edge`).
    pub fn add_edge_reader(
        &self,
        owner: &Bound<'_, PyAny>,
        method: &Bound<'_, pyo3::types::PyString>,
    ) -> PyResult<()> {
        self.watch_as(owner, method, false, Trigger::Edge)
    }

    fn watch_as(
        &self,
        owner: &Bound<'_, PyAny>,
        method: &Bound<'_, pyo3::types::PyString>,
        write: bool,
        trigger: Trigger,
    ) -> PyResult<()> {
        let py = owner.py();
        let Some(lp) = self.lp(py) else {
            return Ok(());
        };
        let cb = owner.getattr(method)?;
        let fd_obj = self.fd(py).into_pyobject(py)?.into_any();
        LoopCore::add_watch_as(&lp, &fd_obj, cb, PyTuple::empty(py), write, trigger)?;
        Ok(())
    }

    /// `loop.call_soon(cb, *args)`; nothing once the loop is released.
    pub fn call_soon(
        &self,
        py: Python<'_>,
        cb: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let Some(lp) = self.lp(py) else {
            return Ok(());
        };
        LoopCore::call_soon(&lp, cb, args, None)?;
        Ok(())
    }

    /// `loop.call_exception_handler({message, exception, transport, protocol})`.
    pub fn report(&self, py: Python<'_>, message: &str, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(lp) = self.lp(py) else {
            return Ok(());
        };
        let ctx = PyDict::new(py);
        ctx.set_item("message", message)?;
        ctx.set_item("exception", exc)?;
        ctx.set_item("transport", self.transport_obj(py))?;
        ctx.set_item("protocol", self.protocol_obj(py))?;
        lp.call_method1("call_exception_handler", (ctx,))?;
        Ok(())
    }

    /// The debug-mode log of an error that is not reported:
    /// `logger.debug("%r: %s", transport, message, exc_info=exc)`.
    pub fn log_error(&self, py: Python<'_>, message: &str, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let kw = PyDict::new(py);
        kw.set_item("exc_info", exc)?;
        logger(py)?.call_method(
            "debug",
            ("%r: %s", self.transport_obj(py), message),
            Some(&kw),
        )?;
        Ok(())
    }

    /// Schedule `connection_made(transport)`, then `then()` if given, then
    /// the waiter's result: the order of asyncio's transport constructors.
    pub fn start(
        &self,
        py: Python<'_>,
        then: Option<Bound<'_, PyAny>>,
        waiter: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let made = self
            .protocol_obj(py)
            .into_bound(py)
            .getattr(pyo3::intern!(py, "connection_made"))?;
        self.call_soon(py, made, PyTuple::new(py, [self.transport_obj(py)])?)?;
        if let Some(cb) = then {
            self.call_soon(py, cb, PyTuple::empty(py))?;
        }
        if let Some(w) = waiter.filter(|w| !w.is_none()) {
            let f = py
                .import(pyo3::intern!(py, "asyncio.futures"))?
                .getattr(pyo3::intern!(py, "_set_result_unless_cancelled"))?;
            self.call_soon(
                py,
                f,
                PyTuple::new(py, [w.clone(), py.None().into_bound(py)])?,
            )?;
        }
        Ok(())
    }

    /// `loop.call_soon(owner._call_connection_lost, exc)`.
    pub fn schedule_connection_lost(
        &self,
        owner: &Bound<'_, PyAny>,
        exc: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = owner.py();
        let cb = owner.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        self.call_soon(py, cb, PyTuple::new(py, [exc])?)
    }

    /// `protocol.pause_writing()` / `resume_writing()`; an error goes to the
    /// loop's exception handler as `protocol.<method>() failed`.
    pub fn flow_callback(&self, py: Python<'_>, method: &str) -> PyResult<()> {
        let protocol = self.protocol_obj(py);
        match protocol.bind(py).call_method0(method) {
            Ok(_) => Ok(()),
            Err(e) if is_exit(py, &e) => Err(e),
            Err(e) => self.report(py, &format!("protocol.{method}() failed"), e.value(py)),
        }
    }

    /// The body of `_call_connection_lost(exc)`: `protocol.connection_lost`
    /// (when `connected`), then, whatever it did, take the socket or pipe
    /// (it stays on the transport while the protocol runs, as in asyncio),
    /// close it and [`release`](Self::release); the protocol's error first,
    /// then the close's.
    pub fn connection_lost(
        &self,
        py: Python<'_>,
        exc: &Bound<'_, PyAny>,
        connected: bool,
        take_resource: impl FnOnce() -> Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let res = match self.protocol(py) {
            Some(p) if connected => p
                .bind(py)
                .call_method1(pyo3::intern!(py, "connection_lost"), (exc,))
                .map(drop),
            _ => Ok(()),
        };
        let closed = close_object(py, take_resource());
        self.release(py);
        res?;
        closed
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        let Some(l) = self.0.gc_borrow() else {
            return Ok(());
        };
        if let Some(lp) = &l.lp {
            visit.call(lp)?;
        }
        visit.call(&l.protocol)?;
        visit.call(&l.transport)?;
        Ok(())
    }

    pub fn clear(&self) {
        let taken = self
            .0
            .gc_borrow_mut()
            .map(|mut l| (l.lp.take(), l.protocol.take(), l.transport.take()));
        drop(taken);
    }
}

/// `fut.set_exception(exc)`, or `fut.set_result(None)` without one.
pub fn set_future(py: Python<'_>, fut: &Py<PyAny>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let f = fut.bind(py);
    match exc {
        Some(e) => f.call_method1(pyo3::intern!(py, "set_exception"), (e,))?,
        None => f.call_method1(pyo3::intern!(py, "set_result"), (py.None(),))?,
    };
    Ok(())
}

/// `os.read`-style system calls on a raw descriptor.
pub fn read_fd(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the callers pass a writable region of `len` bytes that stays
    // valid for the call.
    let n = unsafe { libc::read(fd, ptr.cast(), len) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub fn write_fd(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice for the duration of the call; write
    // only reads it.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A read at least this large makes the next read on the same descriptor
/// land straight in its `bytes` (see [`read_bytes`]).
pub const BIG_READ: usize = 32 * 1024;

extern "C" {
    // Not in pyo3-ffi's public API; CPython exports it (this crate is
    // built per interpreter version, never for the limited API).
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> c_int;
}

/// Read once from `fd` into a new `bytes` (empty at EOF), at most
/// [`MAX_READ`] bytes as asyncio's `max_size`.
///
/// Small reads land in the thread's scratch buffer and are copied into a
/// `bytes` of the size that came. After a read of [`BIG_READ`] or more
/// (`big`, which this keeps up to date), the kernel is asked how much is
/// queued (`FIONREAD`, one cheap system call) and the read goes straight
/// into a `bytes` of that size: on 100 KiB messages the copy was nearly
/// all of the user-space work per message.
pub fn read_bytes<'py>(
    py: Python<'py>,
    fd: RawFd,
    big: &AtomicBool,
    read: impl Fn(RawFd, *mut u8, usize) -> io::Result<usize>,
) -> io::Result<Bound<'py, PyBytes>> {
    if big.load(Ordering::Relaxed) {
        match queued(fd) {
            Some(n) if n > 0 => return read_direct(py, fd, n.min(MAX_READ), big, read),
            // Nothing queued (EOF, an error to take, or a spurious wake-up),
            // or a descriptor without FIONREAD: the plain way tells which.
            _ => {}
        }
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let len = s.len();
        let n = read(fd, s.as_mut_ptr(), len)?;
        big.store(n >= BIG_READ, Ordering::Relaxed);
        Ok(bytes_from(py, &s[..n]))
    })
}

/// Bytes queued for reading on `fd`, if the descriptor can say.
pub fn queued(fd: RawFd) -> Option<usize> {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes one `int` through the pointer, which points
    // at a live local.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut c_int) };
    (rc == 0).then_some(n.max(0) as usize)
}

/// [`read_bytes`]'s path without a copy: read up to `cap` bytes into a new
/// `bytes` of that size, shrunk to what came.
fn read_direct<'py>(
    py: Python<'py>,
    fd: RawFd,
    cap: usize,
    big: &AtomicBool,
    read: impl Fn(RawFd, *mut u8, usize) -> io::Result<usize>,
) -> io::Result<Bound<'py, PyBytes>> {
    let mut b = UninitBytes::new(py, cap)?;
    let n = read(fd, b.as_mut_ptr(), cap)?;
    big.store(n >= BIG_READ, Ordering::Relaxed);
    b.finish(py, n)
}

/// A new `bytes` object that nothing else has seen yet, to be written in
/// place (by a `recv`, or by the kernel for a completion op) and then
/// shrunk to what was written. Dropped unfinished, it is simply freed: its
/// uninitialised bytes never reach Python.
#[derive(Debug)]
pub struct UninitBytes {
    obj: Py<PyBytes>,
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: `ptr` points into the bytes object `obj` keeps alive, which no
// one else references; a `Py` may be dropped on any thread (pyo3 defers
// the decref to a thread holding the GIL).
unsafe impl Send for UninitBytes {}

impl UninitBytes {
    /// Room for `cap` bytes (`cap` > 0: CPython shares its empty `bytes`).
    pub fn new(py: Python<'_>, cap: usize) -> io::Result<Self> {
        // Out of memory: CPython set MemoryError; report it as ENOMEM.
        Self::try_new(py, cap).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))
    }

    /// [`Self::new`], with CPython's `MemoryError` when there is no room.
    pub fn try_new(py: Python<'_>, cap: usize) -> PyResult<Self> {
        debug_assert!(cap > 0 && cap <= isize::MAX as usize);
        if let Some(b) = take_spare(py, cap) {
            // SAFETY: the spare is unshared, with room for `cap` bytes.
            let ptr = unsafe { ffi::PyBytes_AS_STRING(b.as_ptr()) }
                .cast::<u8>()
                .cast_mut();
            return Ok(UninitBytes {
                obj: b.unbind(),
                ptr,
                cap,
            });
        }
        // SAFETY: a null source asks CPython for an uninitialised `bytes`
        // of `cap` bytes; we hold the GIL.
        let raw =
            unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), cap as ffi::Py_ssize_t) };
        if raw.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `raw` is a new `bytes`; its buffer holds `cap` bytes (and
        // a trailing NUL) and stays where it is until it is resized.
        let ptr = unsafe { ffi::PyBytes_AsString(raw) }.cast::<u8>();
        // SAFETY: `raw` is a new, owned reference to a `bytes`.
        let obj =
            unsafe { Bound::from_owned_ptr(py, raw).cast_into_unchecked::<PyBytes>() }.unbind();
        Ok(UninitBytes { obj, ptr, cap })
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    /// The `bytes`, of the `n` bytes written at the start (`n` <= the
    /// capacity: the rest is cut off, in place).
    pub fn finish(self, py: Python<'_>, n: usize) -> io::Result<Bound<'_, PyBytes>> {
        assert!(n <= self.cap, "more bytes than the buffer holds");
        let mut raw = self.obj.into_ptr();
        // SAFETY: `raw` is still unshared with a refcount of one, as
        // `_PyBytes_Resize` requires; on failure it frees the object and
        // sets `raw` to null.
        if n < self.cap && unsafe { _PyBytes_Resize(&mut raw, n as ffi::Py_ssize_t) } != 0 {
            drop(PyErr::take(py));
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        // SAFETY: `raw` is a valid, owned `bytes` reference.
        Ok(unsafe { Bound::from_owned_ptr(py, raw).cast_into_unchecked() })
    }
}

/// `Flow::set_limits` with asyncio's `ValueError`.
pub fn set_limits(flow: &mut Flow, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
    flow.set_limits(high, low)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// `obj.close()` on a socket or pipe object taken from a transport.
pub fn close_object(py: Python<'_>, obj: Option<Py<PyAny>>) -> PyResult<()> {
    match obj {
        Some(o) => crate::plain_sock::close(py, o.bind(py)),
        None => Ok(()),
    }
}

/// What `write` accepts: bytes, bytearray and memoryview, as asyncio.
pub fn check_bytes_like(data: &Bound<'_, PyAny>) -> PyResult<()> {
    if data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>()
    {
        return Ok(());
    }
    Err(PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not '{}'",
        data.get_type().name()?
    )))
}

/// `weakref.WeakValueDictionary`, `weakref.KeyedRef` and `weakref.ref.__new__`.
static WEAK_VALUES: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();

/// `loop._transports[fd] = transport`. For exactly a
/// `weakref.WeakValueDictionary` with no removals pending, what its
/// `__setitem__` does, without its three Python frames (`__setitem__`,
/// `KeyedRef.__new__` and `KeyedRef.__init__`, which only checks its
/// arguments again): a `KeyedRef` to the transport, with the dictionary's
/// removal callback and `fd` as its key, stored in the dictionary's `data`.
/// Any other mapping gets its own `__setitem__`.
#[pyfunction]
pub fn _register_transport(
    mapping: &Bound<'_, PyAny>,
    fd: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = mapping.py();
    let [wvd, keyed_ref, ref_new] = WEAK_VALUES.get_or_try_init(py, || {
        let weakref = py.import("weakref")?;
        Ok::<_, PyErr>([
            weakref.getattr("WeakValueDictionary")?.unbind(),
            weakref.getattr("KeyedRef")?.unbind(),
            weakref.getattr("ref")?.getattr("__new__")?.unbind(),
        ])
    })?;
    if mapping.get_type().is(wvd.bind(py))
        && !mapping
            .getattr(pyo3::intern!(py, "_pending_removals"))?
            .is_truthy()?
    {
        let remove = mapping.getattr(pyo3::intern!(py, "_remove"))?;
        let r = ref_new.bind(py).call1((keyed_ref, transport, remove))?;
        r.setattr(pyo3::intern!(py, "key"), fd)?;
        return mapping.getattr(pyo3::intern!(py, "data"))?.set_item(fd, r);
    }
    mapping.set_item(fd, transport)
}
