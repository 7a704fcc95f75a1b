//! `Handle` and `TimerHandle`: what `call_soon` and `call_later` return.
//!
//! They behave as asyncio's: `cancel()` clears the callback and its
//! arguments (keeping the repr in debug mode), a cancelled timer is counted
//! by its loop so cancelled timers can be compacted, and a callback runs in
//! the `contextvars.Context` captured when it was scheduled. Running one is
//! the hot path: enter the context, vectorcall the callback, leave the context.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use crate::cell::GilCell;
use crate::loop_core::LoopCore;

pub struct TimerData {
    pub when: f64,
    /// The object given to `call_at`, when it was not a float: asyncio's
    /// `when()` returns it as given.
    pub when_obj: Option<Py<PyAny>>,
    pub scheduled: AtomicBool,
}

/// A callback scheduled on the loop.
#[pyclass(module = "ferroloop._ferroloop", subclass, weakref, frozen)]
pub struct Handle {
    callback: GilCell<Option<Py<PyAny>>>,
    args: GilCell<Option<Py<PyTuple>>>,
    // Released by `Drop for Handle`, which knows the thread is attached.
    context: ManuallyDrop<Py<PyAny>>,
    loop_: ManuallyDrop<Py<LoopCore>>,
    cancelled: AtomicBool,
    /// `hide_context` took the context out of the collector's sight.
    context_hidden: AtomicBool,
    source_traceback: Option<Py<PyAny>>,
    repr: GilCell<Option<Py<PyAny>>>,
    pub(crate) timer: Option<TimerData>,
}

impl Drop for Handle {
    /// Release the references with plain decrefs: a `Py`'s own drop first
    /// asks a thread-local whether the thread is attached, which from this
    /// shared library costs a `__tls_get_addr` call per handle.
    fn drop(&mut self) {
        // SAFETY: a `Handle` is dropped only with the thread attached: by
        // its Python object's `tp_dealloc`, or by the native code that made
        // it, which holds a `Python` token (pyo3 runs no destructor of a
        // pyclass value elsewhere).
        let py = unsafe { Python::assume_attached() };
        if let Some(c) = self.callback.get_mut().take() {
            c.drop_ref(py);
        }
        if let Some(a) = self.args.get_mut().take() {
            a.drop_ref(py);
        }
        if let Some(r) = self.repr.get_mut().take() {
            r.drop_ref(py);
        }
        // CPython frees a context expecting the collector to track it.
        self.show_context();
        // SAFETY: each field is taken once, here, and never used again.
        unsafe {
            ManuallyDrop::take(&mut self.context).drop_ref(py);
            ManuallyDrop::take(&mut self.loop_).drop_ref(py);
        }
    }
}

/// A callback scheduled at a point in time.
#[pyclass(module = "ferroloop._ferroloop", extends = Handle, frozen, weakref)]
pub struct TimerHandle;

static FORMAT_HELPERS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

pub fn format_helpers(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    FORMAT_HELPERS
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("asyncio.format_helpers")?.unbind())
        })
        .map(|m| m.bind(py))
}

/// `format_helpers.extract_stack(sys._getframe(0), limit)`: where the caller
/// of the native method that schedules a callback stands. asyncio takes
/// `DEBUG_STACK_DEPTH` (10) frames from inside its own methods and then drops
/// its own frames, so the caller gets 10 minus that many: 8 for `call_soon`
/// and `call_at`, 7 for `call_later`; the callers pass that limit.
pub fn extract_stack(py: Python<'_>, limit: usize) -> PyResult<Py<PyAny>> {
    let frame = py.import("sys")?.call_method1("_getframe", (0,))?;
    Ok(format_helpers(py)?
        .call_method1("extract_stack", (frame, limit))?
        .unbind())
}

impl Handle {
    /// Hide the handle's context from the collector along with the handle
    /// (the loop's queue hides it): only a `contextvars.Context` this
    /// handle alone holds, the copy made for it. Every way the context can
    /// reach other hands shows it first ([`show_context`](Self::show_context)):
    /// the `get_context()` and `_context` getters, `copy`, a run after
    /// which something kept it, the loop letting go of a handle held
    /// elsewhere, and the handle's own drop, since CPython frees a context
    /// expecting it tracked. While hidden, the loop's `__traverse__` visits
    /// it for the handle, as it does the handle's other references.
    pub(crate) fn hide_context(&self) {
        let ctx = self.context.as_ptr();
        // SAFETY: the GIL is held (the caller queues the handle with the
        // loop's state borrowed); `ctx` is live (the handle owns a
        // reference); the reads are of its refcount, type and GC link.
        unsafe {
            if ffi::Py_REFCNT(ctx) == 1
                && ffi::PyContext_CheckExact(ctx) != 0
                && ffi::PyObject_GC_IsTracked(ctx) != 0
            {
                ffi::PyObject_GC_UnTrack(ctx.cast());
                self.context_hidden.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Track the handle's context again if [`hide_context`](Self::hide_context)
    /// hid it.
    #[inline]
    pub(crate) fn show_context(&self) {
        if !self.context_hidden.swap(false, Ordering::Relaxed) {
            return;
        }
        let ctx = self.context.as_ptr();
        // SAFETY: called with the GIL held (every caller holds a `Python`
        // token or is the handle's drop, which runs attached); `ctx` is
        // live; the check keeps `PyObject_GC_Track` (fatal on a tracked
        // object) safe should anything else have tracked it.
        unsafe {
            if ffi::PyObject_GC_IsTracked(ctx) == 0 {
                ffi::PyObject_GC_Track(ctx.cast());
            }
        }
    }

    /// The context, shown to the collector first, for other hands.
    fn shared_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.show_context();
        self.context.clone_ref(py)
    }

    /// What the handle refers to, for a collector's visit: its own
    /// `__traverse__`, and the loop's for the handles it queued untracked.
    pub(crate) fn visit_contents(
        &self,
        visit: &pyo3::PyVisit<'_>,
    ) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&*self.context)?;
        visit.call(&*self.loop_)?;
        visit.call(&self.source_traceback)?;
        if let Some(t) = &self.timer {
            visit.call(&t.when_obj)?;
        }
        if let Some(cb) = self.callback.gc_borrow() {
            visit.call(cb.as_ref())?;
        }
        if let Some(a) = self.args.gc_borrow() {
            visit.call(a.as_ref())?;
        }
        Ok(())
    }

    pub fn new(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        loop_: Py<LoopCore>,
        debug_stack_depth: Option<usize>,
        timer: Option<(f64, Option<Py<PyAny>>)>,
    ) -> PyResult<Self> {
        let context = match context {
            Some(c) if !c.is_none(py) => c,
            // SAFETY: PyContext_CopyCurrent returns a new reference or NULL
            // with an exception set; from_owned_ptr_or_err handles both.
            _ => unsafe {
                Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())?.unbind()
            },
        };
        let source_traceback = match debug_stack_depth {
            Some(limit) => Some(extract_stack(py, limit)?),
            None => None,
        };
        Ok(Handle {
            callback: GilCell::new(Some(callback)),
            args: GilCell::new(Some(args)),
            context: ManuallyDrop::new(context),
            loop_: ManuallyDrop::new(loop_),
            cancelled: AtomicBool::new(false),
            context_hidden: AtomicBool::new(false),
            source_traceback,
            repr: GilCell::new(None),
            timer: timer.map(|(when, when_obj)| TimerData {
                when,
                when_obj,
                scheduled: AtomicBool::new(true),
            }),
        })
    }

    /// A handle for a watch the loop's native code registers:
    /// `callback()`, in a copy of the current context, without a source
    /// traceback.
    pub fn new_bare(
        py: Python<'_>,
        callback: Py<PyAny>,
        loop_: Py<LoopCore>,
    ) -> PyResult<Py<Handle>> {
        let h = Handle::new(
            py,
            callback,
            PyTuple::empty(py).unbind(),
            None,
            loop_,
            None,
            None,
        )?;
        crate::freelist::new_handle(py, h)
    }

    /// A new handle with this one's callback, arguments and context, to run
    /// it once more; `None` once it is cancelled (its callback is gone).
    pub fn copy(&self, py: Python<'_>) -> PyResult<Option<Py<Handle>>> {
        let callback = self.callback.borrow(py).as_ref().map(|c| c.clone_ref(py));
        let args = self.args.borrow(py).as_ref().map(|a| a.clone_ref(py));
        let (Some(callback), Some(args)) = (callback, args) else {
            return Ok(None);
        };
        let h = Handle::new(
            py,
            callback,
            args,
            Some(self.shared_context(py)),
            self.loop_.clone_ref(py),
            None,
            None,
        )?;
        crate::freelist::new_handle(py, h).map(Some)
    }

    pub fn cancel_bound(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let h = slf.get();
        if h.cancelled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let lp = h.loop_.get();
        h.cancelled.store(true, Ordering::Relaxed);
        if lp.debug(py) {
            // Keep the repr, callback included, for "Executing ... took" logs.
            let r = slf.repr()?.unbind();
            *h.repr.borrow_mut(py) = Some(r.into_any());
        }
        if let Some(t) = &h.timer {
            if t.scheduled.load(Ordering::Relaxed) {
                lp.timer_cancelled(py);
            }
        }
        // Drop the references outside the borrows: dropping may run __del__.
        let cb = h.callback.borrow_mut(py).take();
        let args = h.args.borrow_mut(py).take();
        drop((cb, args));
        Ok(())
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn mark_unscheduled(&self) {
        if let Some(t) = &self.timer {
            t.scheduled.store(false, Ordering::Relaxed);
        }
    }

    /// Run the callback in its context. Exceptions other than `SystemExit`
    /// and `KeyboardInterrupt` go to the loop's exception handler, as in
    /// asyncio's `Handle._run`; those two propagate.
    pub fn run(slf: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let h = slf.get();
        let (cb, args) = {
            let cb = h.callback.borrow(py);
            let args = h.args.borrow(py);
            match (cb.as_ref(), args.as_ref()) {
                // Bound clones: their drop is a plain decref, where a `Py`'s
                // looks up whether the thread is attached first.
                (Some(c), Some(a)) => (c.bind(py).clone(), a.bind(py).clone()),
                _ => return Ok(()),
            }
        };
        let ctx = h.context.as_ptr();
        // SAFETY: `ctx` is a live object owned by the handle; the check only
        // reads its type.
        if unsafe { ffi::PyContext_CheckExact(ctx) } == 0 {
            // asyncio calls `context.run(callback, *args)` on whatever object
            // it was given; do the same, with the same errors.
            let res = h
                .context
                .bind(py)
                .getattr(pyo3::intern!(py, "run"))
                .and_then(|run| {
                    let mut all = vec![cb.clone()];
                    all.extend(args.iter());
                    run.call1(PyTuple::new(py, all)?)
                })
                .map(drop);
            return Self::finish(slf, &cb, &args, res);
        }
        // SAFETY: `ctx` is an exact Context owned by the handle;
        // PyContext_Enter returns -1 with an exception set on failure (e.g.
        // the context is already entered).
        let entered = unsafe { ffi::PyContext_Enter(ctx) } == 0;
        let result = if entered {
            let args_ptr = args.as_ptr();
            // SAFETY: `args` is a tuple we hold a reference to, so its items
            // stay alive for the call; vectorcall gets a pointer to its item
            // array and its length, and returns a new reference or NULL.
            let res = unsafe {
                let n = ffi::PyTuple_GET_SIZE(args_ptr);
                let items = (*(args_ptr as *mut ffi::PyTupleObject)).ob_item.as_ptr();
                ffi::PyObject_Vectorcall(cb.as_ptr(), items, n as usize, std::ptr::null_mut())
            };
            // SAFETY: we entered `ctx` above and leave it exactly once; while
            // an exception may be pending, PyContext_Exit does not touch it.
            let exit_failed = unsafe { ffi::PyContext_Exit(ctx) } != 0;
            // SAFETY: `ctx` is live (the handle holds it); a refcount read.
            if unsafe { ffi::Py_REFCNT(ctx) } > 1 {
                // Something the callback ran kept the context.
                h.show_context();
            }
            if res.is_null() {
                Err(PyErr::fetch(py))
            } else {
                // SAFETY: `res` is a new reference we own and drop at once.
                unsafe { ffi::Py_DECREF(res) };
                if exit_failed {
                    Err(PyErr::fetch(py))
                } else {
                    Ok(())
                }
            }
        } else {
            Err(PyErr::fetch(py))
        };
        Self::finish(slf, &cb, &args, result)
    }

    #[inline]
    fn finish(
        slf: &Bound<'_, Handle>,
        cb: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        result: PyResult<()>,
    ) -> PyResult<()> {
        match result {
            Ok(()) => Ok(()),
            Err(err) => report_callback_error(slf, cb, args, err),
        }
    }
}

/// A callback's exception: `KeyboardInterrupt` and `SystemExit` go on;
/// any other goes to the loop's exception handler, as asyncio's
/// `Handle._run` reports it.
#[cold]
fn report_callback_error(
    slf: &Bound<'_, Handle>,
    cb: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    err: PyErr,
) -> PyResult<()> {
    let py = slf.py();
    if err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py) {
        return Err(err);
    }
    let py = slf.py();
    let src = format_helpers(py)?.call_method1("_format_callback_source", (cb, args))?;
    let ctx = PyDict::new(py);
    ctx.set_item("message", format!("Exception in callback {src}"))?;
    ctx.set_item("exception", err.into_value(py))?;
    ctx.set_item("handle", slf)?;
    if let Some(tb) = &slf.get().source_traceback {
        if tb.bind(py).is_truthy()? {
            ctx.set_item("source_traceback", tb)?;
        }
    }
    slf.get()
        .loop_
        .bind(py)
        .call_method1("call_exception_handler", (ctx,))?;
    Ok(())
}

fn repr_info(slf: &Bound<'_, Handle>, class_name: &str) -> PyResult<Vec<String>> {
    let py = slf.py();
    let h = slf.get();
    let mut info = vec![class_name.to_owned()];
    if h.is_cancelled() {
        info.push("cancelled".into());
    }
    if let Some(t) = &h.timer {
        info.push(format!("when={}", when_object(py, t)?.bind(py).repr()?));
    }
    let cb = h.callback.borrow(py).as_ref().map(|c| c.clone_ref(py));
    let args = h.args.borrow(py).as_ref().map(|a| a.clone_ref(py));
    if let Some(cb) = cb {
        let src = format_helpers(py)?.call_method1("_format_callback_source", (cb, args))?;
        info.push(src.extract::<String>()?);
    }
    if let Some(tb) = &h.source_traceback {
        let tb = tb.bind(py);
        if tb.is_truthy()? {
            let frame = tb.get_item(-1)?;
            let file = frame.get_item(0)?;
            let line = frame.get_item(1)?;
            info.push(format!("created at {file}:{line}"));
        }
    }
    Ok(info)
}

#[pymethods]
impl Handle {
    /// Cancel the callback. Cancelling twice does nothing.
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::cancel_bound(slf)
    }

    /// True if the handle was cancelled.
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// The `contextvars.Context` the callback runs in.
    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.shared_context(py)
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::run(slf)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.borrow(py).as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.args.borrow(py).as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.shared_context(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<LoopCore> {
        self.loop_.clone_ref(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|t| t.clone_ref(py))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        if let Some(r) = slf.get().repr.borrow(py).as_ref() {
            return r.extract(py);
        }
        let name = slf.get_type().name()?.to_string();
        Ok(format!("<{}>", repr_info(slf, &name)?.join(" ")))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.visit_contents(&visit)
    }

    fn __clear__(&self) {
        let cb = self.callback.gc_borrow_mut().and_then(|mut c| c.take());
        let args = self.args.gc_borrow_mut().and_then(|mut a| a.take());
        drop((cb, args));
    }
}

fn when_object(py: Python<'_>, t: &TimerData) -> PyResult<Py<PyAny>> {
    Ok(match &t.when_obj {
        Some(w) => w.clone_ref(py),
        None => t.when.into_pyobject(py)?.into_any().unbind(),
    })
}

fn timer_data<'a>(slf: &'a Bound<'_, TimerHandle>) -> &'a TimerData {
    slf.as_super()
        .get()
        .timer
        .as_ref()
        .expect("a TimerHandle always has timer data")
}

#[pymethods]
impl TimerHandle {
    /// The absolute time the callback is scheduled for, in loop time.
    fn when(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        when_object(slf.py(), timer_data(slf))
    }

    #[getter]
    fn _when(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        when_object(slf.py(), timer_data(slf))
    }

    #[getter]
    fn _scheduled(slf: &Bound<'_, Self>) -> bool {
        timer_data(slf).scheduled.load(Ordering::Relaxed)
    }

    fn __hash__(slf: &Bound<'_, Self>) -> PyResult<isize> {
        when_object(slf.py(), timer_data(slf))?
            .bind(slf.py())
            .hash()
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (timer_data(slf).when, timer_data(other).when);
        let same = || -> PyResult<bool> {
            if a != b {
                return Ok(false);
            }
            let (x, y) = (slf.as_super().get(), other.as_super().get());
            if x.is_cancelled() != y.is_cancelled() {
                return Ok(false);
            }
            let (cx, cy) = (x._callback(py), y._callback(py));
            let (ax, ay) = (x._args(py), y._args(py));
            Ok(cx.into_pyobject(py)?.eq(cy)? && ax.into_pyobject(py)?.eq(ay)?)
        };
        let r = match op {
            CompareOp::Lt => a < b,
            CompareOp::Gt => a > b,
            CompareOp::Le => a < b || same()?,
            CompareOp::Ge => a > b || same()?,
            CompareOp::Eq => same()?,
            CompareOp::Ne => !same()?,
        };
        Ok(r.into_pyobject(py)?.to_owned().into_any().unbind())
    }
}
