//! `sock_recv`, `sock_recv_into` and `sock_sendall` as native awaitables.
//!
//! asyncio's versions are `async def` methods whose common case is one
//! socket call: the data is already there, or the send goes out whole. In
//! that case most of their cost is being a coroutine (a frame made and
//! run) and the checks before the call, made in bytecode. Here the method
//! returns a [`SockCall`], a small object that speaks the coroutine
//! protocol and is registered as a `collections.abc.Coroutine` (so
//! `create_task` and `iscoroutine` accept it as they accept asyncio's).
//! Its first step makes the socket call (natively for a plain socket in
//! non-blocking mode, `plain_sock.rs`; otherwise through the socket's own
//! method, so subclasses are honoured) and, when that completes the
//! operation, returns the result through the type's `am_send` slot: no
//! frame, and no `StopIteration` object.
//!
//! When the call would block (or sent only part), the wait is native too,
//! and is asyncio's from that point: a future of the loop, the descriptor
//! checked against the loop's transports, and a reader (a writer for
//! `sock_sendall`) registered as `_add_reader` registers one, whose
//! callback makes the call again until the operation ends, then sets the
//! future and stops watching unless the watch was replaced meanwhile
//! (`_sock_recv`, `_sock_sendall`, `_sock_read_done`). The loop knows the
//! watch as a `sock_*` wait, so one whose socket is closed under it is
//! ended as asyncio's would be (`fds.rs`). The task's steps are relayed to
//! the future's iterator; a cancellation (thrown in) or `close()` also
//! stops the watch.
//!
//! In debug mode and for an `ssl.SSLSocket` the step hands over to
//! asyncio's own coroutine, and every later `send`, `throw` and `close`
//! is relayed to it.

use pyo3::exceptions::{
    PyBlockingIOError, PyInterruptedError, PyKeyboardInterrupt, PyRuntimeError, PySystemExit,
    PyTypeError,
};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use std::os::fd::RawFd;

use crate::cell::GilCell;
use crate::handle::Handle;
use crate::loop_core::{LoopCore, Trigger};
use crate::plain_sock::{Native, PlainSocket};

/// Which call: `sock_recv`, `sock_recv_into` or `sock_sendall`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Recv,
    RecvInto,
    SendAll,
}

impl Op {
    pub(crate) const ALL: [Op; 3] = [Op::Recv, Op::RecvInto, Op::SendAll];

    /// The socket method the operation calls.
    pub(crate) fn method(self, py: Python<'_>) -> &Bound<'_, PyString> {
        match self {
            Op::Recv => intern!(py, "recv"),
            Op::RecvInto => intern!(py, "recv_into"),
            Op::SendAll => intern!(py, "send"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Recv => "sock_recv",
            Op::RecvInto => "sock_recv_into",
            Op::SendAll => "sock_sendall",
        }
    }
}

enum State {
    /// Not started: the loop, the socket and the argument.
    Start {
        lp: Py<LoopCore>,
        sock: Py<PyAny>,
        arg: Py<PyAny>,
    },
    /// Waiting: `iter` is asyncio's coroutine (debug mode, SSL), or the
    /// iterator of the future a native wait completes; the steps are
    /// relayed to it.
    Waiting {
        iter: Py<PyAny>,
        wait: Option<Wait>,
    },
    Done,
}

/// A native wait: the loop runs `SockCall._ready` (the handle's callback)
/// when the socket is ready, which makes the socket call again and, once
/// the operation ends, sets the future's result or exception and stops
/// watching the descriptor; as asyncio's `_sock_recv`, `_sock_recv_into`
/// and `_sock_sendall` do with its reader and writer callbacks, and its
/// `_sock_read_done` / `_sock_write_done`.
struct Wait {
    lp: Py<LoopCore>,
    fut: Py<PyAny>,
    sock: Py<PyAny>,
    /// `n`, the buffer, or `memoryview(data)` for `sock_sendall`.
    arg: Py<PyAny>,
    handle: Py<Handle>,
    fd: RawFd,
    /// Watched for writing (`sock_sendall`), not reading.
    write: bool,
    /// `sock_sendall`: how much of `arg` went out.
    sent: usize,
}

/// What `sock_recv`, `sock_recv_into` and `sock_sendall` return.
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct SockCall {
    op: Op,
    state: GilCell<State>,
}

/// One step's outcome: a value yielded to the task, or the result.
enum Step {
    Yield(Py<PyAny>),
    Return(Py<PyAny>),
}

static SSL_SOCKET: PyOnceLock<Option<Py<PyType>>> = PyOnceLock::new();
static ASYNCIO_OPS: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();

/// `ssl.SSLSocket`, or None where `ssl` cannot be imported (as asyncio's
/// check has it).
fn ssl_socket_type(py: Python<'_>) -> Option<&Bound<'_, PyType>> {
    SSL_SOCKET
        .get_or_init(py, || {
            py.import("ssl")
                .and_then(|m| m.getattr("SSLSocket"))
                .and_then(|t| Ok(t.cast_into::<PyType>()?.unbind()))
                .ok()
        })
        .as_ref()
        .map(|t| t.bind(py))
}

/// asyncio's coroutine function for `op`, unbound.
fn asyncio_op(py: Python<'_>, op: Op) -> PyResult<&Bound<'_, PyAny>> {
    let ops = ASYNCIO_OPS.get_or_try_init(py, || {
        let cls = py
            .import("asyncio.selector_events")?
            .getattr("BaseSelectorEventLoop")?;
        let [a, b, c] = Op::ALL.map(|op| cls.getattr(op.name()));
        Ok::<_, PyErr>([a?.unbind(), b?.unbind(), c?.unbind()])
    })?;
    Ok(ops[op as usize].bind(py))
}

impl SockCall {
    pub(crate) fn new(
        py: Python<'_>,
        op: Op,
        lp: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        arg: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SockCall>> {
        Py::new(
            py,
            SockCall {
                op,
                state: GilCell::new(State::Start {
                    lp: lp.clone().unbind(),
                    sock: sock.clone().unbind(),
                    arg: arg.clone().unbind(),
                }),
            },
        )
    }

    /// Send `value` in: the first step makes the call, later ones are
    /// relayed to what it waits on.
    fn step(slf: &Bound<'_, SockCall>, value: &Bound<'_, PyAny>) -> PyResult<Step> {
        let py = slf.py();
        let me = slf.get();
        let state = std::mem::replace(&mut *me.state.borrow_mut(py), State::Done);
        match state {
            State::Start { lp, sock, arg } => {
                if !value.is_none() {
                    *me.state.borrow_mut(py) = State::Start { lp, sock, arg };
                    return Err(PyTypeError::new_err(
                        "can't send non-None value to a just-started coroutine",
                    ));
                }
                let (lp, sock, arg) = (lp.bind(py), sock.bind(py), arg.bind(py));
                let ps = PlainSocket::get(py)?;
                let direct = ps.is_exact(py, sock).then_some(ps);
                let plain = !lp.get().debug(py)
                    && (direct.is_some()
                        || !ssl_socket_type(py)
                            .is_some_and(|t| sock.is_instance(t).unwrap_or(true)));
                if !plain {
                    let coro = asyncio_op(py, me.op)?.call1((lp, sock, arg))?;
                    return me.relay(py, coro.unbind(), None, value);
                }
                match me.try_once(py, lp, sock, arg, direct)? {
                    First::Done(result) => Ok(Step::Return(result)),
                    First::Blocked(sent) => {
                        let (iter, wait) = Self::start_wait(slf, lp, sock, arg, sent)?;
                        me.relay(py, iter, Some(wait), value)
                    }
                }
            }
            State::Waiting { iter, wait } => me.relay(py, iter, wait, value),
            State::Done => Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            )),
        }
    }

    /// Wait natively after a first call that would block (or sent only
    /// `sent` bytes): what asyncio's coroutine does at that point. A
    /// future, the descriptor checked as asyncio checks it, and `_ready`
    /// registered as its reader (writer for `sock_sendall`); the future's
    /// iterator is what the task's steps go to.
    fn start_wait<'py>(
        slf: &Bound<'py, SockCall>,
        lp: &Bound<'py, LoopCore>,
        sock: &Bound<'py, PyAny>,
        arg: &Bound<'py, PyAny>,
        sent: usize,
    ) -> PyResult<(Py<PyAny>, Wait)> {
        let py = slf.py();
        let op = slf.get().op;
        let fut = LoopCore::create_future(lp)?;
        let fd_obj = sock.call_method0(intern!(py, "fileno"))?;
        ensure_no_transport(lp, &fd_obj)?;
        let (arg, sent) = match op {
            Op::SendAll => (
                // SAFETY: `arg` is a live object; PyMemoryView_FromObject
                // returns a new reference or NULL with an error set.
                unsafe {
                    Bound::from_owned_ptr_or_err(py, ffi::PyMemoryView_FromObject(arg.as_ptr()))?
                },
                sent,
            ),
            _ => (arg.clone(), 0),
        };
        let ready = ready_callback(slf)?;
        let handle = Handle::new_bare(py, ready.unbind(), lp.clone().unbind())?;
        let write = op == Op::SendAll;
        LoopCore::watch(
            lp,
            &fd_obj,
            write,
            handle.clone_ref(py),
            Some(sock.clone().unbind()),
            Trigger::OneShot,
        )?;
        let fd = fd_obj.extract::<RawFd>()?;
        let iter = fut
            .bind(py)
            .call_method0(intern!(py, "__await__"))?
            .unbind();
        let wait = Wait {
            lp: lp.clone().unbind(),
            fut,
            sock: sock.clone().unbind(),
            arg: arg.unbind(),
            handle,
            fd,
            write,
            sent,
        };
        Ok((iter, wait))
    }

    /// The socket call, made once (a plain socket's read: see below).
    /// `direct`: `sock` is a plain `socket.socket`, whose call is made
    /// natively when it is in non-blocking mode (`plain_sock.rs`), and
    /// otherwise through its method as found on the type.
    fn try_once<'py>(
        &self,
        py: Python<'py>,
        lp: &Bound<'py, LoopCore>,
        sock: &Bound<'py, PyAny>,
        arg: &Bound<'py, PyAny>,
        direct: Option<&PlainSocket>,
    ) -> PyResult<First> {
        if let Some(plain) = direct {
            let mut got = self.native(py, plain, sock, arg, 0)?;
            if matches!(got, Native::WouldBlock)
                && self.op != Op::SendAll
                && !lp.get().has_ready(py)
            {
                // A read that found nothing tries once more before the
                // wait, when nothing else is ready to run. When the peer
                // shares the CPU, the send just made to it usually hands
                // it the CPU on the way out of this first call, and its
                // answer is there for the second; waiting instead costs a
                // trip through the selector and a sleep. With other
                // callbacks ready (many connections), the peer's answer
                // comes no sooner, and the second call is wasted. (Only
                // for the plain socket, whose calls nobody observes; a
                // subclass's method is called once, as asyncio calls it.)
                got = self.native(py, plain, sock, arg, 0)?;
            }
            match got {
                Native::Read(data) => return Ok(First::Done(data.unbind())),
                Native::Count(n) if self.op == Op::RecvInto => {
                    return Ok(First::Done(n.into_pyobject(py)?.into_any().unbind()))
                }
                Native::Count(n) => {
                    return Ok(if n == arg.len()? {
                        First::Done(py.None())
                    } else {
                        First::Blocked(n)
                    })
                }
                Native::WouldBlock => return Ok(First::Blocked(0)),
                Native::Method => {}
            }
        }
        let called = self.call_method(py, direct, sock, arg);
        match called {
            Ok(r) if self.op != Op::SendAll => Ok(First::Done(r.unbind())),
            // asyncio compares the count sent with `len(data)`, and goes
            // on from `memoryview(data)[sent:]`. A subclass's `send` may
            // return anything, so it gets Python's comparison.
            Ok(sent) => {
                if sent.eq(arg.len()?)? {
                    Ok(First::Done(py.None()))
                } else {
                    Ok(First::Blocked(sent.extract()?))
                }
            }
            Err(e) if would_block(py, &e) => Ok(First::Blocked(0)),
            Err(e) => Err(e),
        }
    }

    /// The socket's method for the operation: for a plain socket as found
    /// on the type (`direct`), otherwise looked up on the object, as
    /// asyncio calls it.
    fn call_method<'py>(
        &self,
        py: Python<'py>,
        direct: Option<&PlainSocket>,
        sock: &Bound<'py, PyAny>,
        arg: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match direct {
            Some(plain) => plain.call_method(py, self.op, sock, arg),
            None => sock.call_method1(self.op.method(py), (arg,)),
        }
    }

    /// The operation's call made natively on a plain socket, `offset`
    /// bytes into the data for `sock_sendall`.
    fn native<'py>(
        &self,
        py: Python<'py>,
        plain: &PlainSocket,
        sock: &Bound<'py, PyAny>,
        arg: &Bound<'py, PyAny>,
        offset: usize,
    ) -> PyResult<Native<'py>> {
        match self.op {
            Op::Recv => plain.recv(py, sock, arg),
            Op::RecvInto => plain.recv_into(py, sock, arg),
            Op::SendAll => plain.send(py, sock, arg, offset),
        }
    }

    fn relay(
        &self,
        py: Python<'_>,
        iter: Py<PyAny>,
        wait: Option<Wait>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<Step> {
        let mut out: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: `iter` and `value` are live objects; PyIter_Send stores a
        // new reference in `out` for NEXT and RETURN and sets an error for
        // ERROR.
        let status = unsafe { ffi::PyIter_Send(iter.as_ptr(), value.as_ptr(), &mut out) };
        if status == ffi::PySendResult::PYGEN_ERROR {
            let err = PyErr::fetch(py);
            end_wait(py, wait, false)?;
            return Err(err);
        }
        // SAFETY: for NEXT and RETURN, `out` is a new reference we now own.
        let out = unsafe { Bound::from_owned_ptr(py, out) }.unbind();
        if status == ffi::PySendResult::PYGEN_NEXT {
            *self.state.borrow_mut(py) = State::Waiting { iter, wait };
            Ok(Step::Yield(out))
        } else {
            end_wait(py, wait, false)?;
            Ok(Step::Return(out))
        }
    }

    /// The descriptor is ready: the socket call again, as asyncio's
    /// reader and writer callbacks make it. The operation ends with a
    /// result or an error (other than "would block"), or with all the data
    /// sent; then the future gets it and the descriptor is no longer
    /// watched. `SystemExit` and `KeyboardInterrupt` go to the loop.
    fn ready(slf: &Bound<'_, SockCall>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let (lp, fd, fut, sock, arg, sent) = match &*me.state.borrow(py) {
            State::Waiting { wait: Some(w), .. } => (
                w.lp.clone_ref(py),
                w.fd,
                w.fut.clone_ref(py).into_bound(py),
                w.sock.clone_ref(py).into_bound(py),
                w.arg.clone_ref(py).into_bound(py),
                w.sent,
            ),
            _ => return Ok(()),
        };
        let finished = if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            // Cancelled meanwhile (or completed by someone else).
            true
        } else {
            let ps = PlainSocket::get(py)?;
            let direct = ps.is_exact(py, &sock).then_some(ps);
            let native = match direct {
                Some(plain) => me.native(py, plain, &sock, &arg, sent),
                None => Ok(Native::Method),
            };
            let called = match native {
                Ok(Native::WouldBlock) => return LoopCore::rearm_watch(lp.bind(py), fd),
                Ok(Native::Read(data)) => Ok(data),
                Ok(Native::Count(n)) => Ok(n.into_pyobject(py)?.into_any()),
                Err(e) => Err(e),
                Ok(Native::Method) => {
                    let arg = if me.op == Op::SendAll && sent > 0 {
                        arg.get_item(pyo3::types::PySlice::new(py, sent as isize, isize::MAX, 1))?
                    } else {
                        arg.clone()
                    };
                    me.call_method(py, direct, &sock, &arg)
                }
            };
            match called {
                Err(e) if would_block(py, &e) => return LoopCore::rearm_watch(lp.bind(py), fd),
                Err(e)
                    if e.is_instance_of::<PyKeyboardInterrupt>(py)
                        || e.is_instance_of::<PySystemExit>(py) =>
                {
                    // The wait stays, as asyncio's reader does, for when
                    // the loop runs again.
                    LoopCore::rearm_watch(lp.bind(py), fd)?;
                    return Err(e);
                }
                Err(e) => {
                    fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?;
                    true
                }
                Ok(r) if me.op == Op::SendAll => {
                    let total = sent + r.extract::<usize>()?;
                    if total == arg.len()? {
                        fut.call_method1(intern!(py, "set_result"), (py.None(),))?;
                        true
                    } else {
                        if let State::Waiting { wait: Some(w), .. } = &mut *me.state.borrow_mut(py)
                        {
                            w.sent = total;
                        }
                        false
                    }
                }
                Ok(r) => {
                    fut.call_method1(intern!(py, "set_result"), (r,))?;
                    true
                }
            }
        };
        if finished {
            let wait = match &mut *me.state.borrow_mut(py) {
                State::Waiting { wait, .. } => wait.take(),
                _ => None,
            };
            end_wait(py, wait, true)?;
        } else {
            // The event was spent (a one-shot registration is disarmed by
            // it) and the wait goes on.
            LoopCore::rearm_watch(lp.bind(py), fd)?;
        }
        Ok(())
    }
}

/// The definition of the wait's callback (see [`ready_callback`]).
struct ReadyDef(ffi::PyMethodDef);

// SAFETY: the definition is written once, before it is shared, and only
// read afterwards (by CPython, under the GIL); its pointers are to static
// strings and a function.
unsafe impl Sync for ReadyDef {}
// SAFETY: as above: nothing in it is tied to a thread.
unsafe impl Send for ReadyDef {}

static READY_DEF: std::sync::OnceLock<ReadyDef> = std::sync::OnceLock::new();

/// `SockCall._ready`'s C function: [`SockCall::ready`].
unsafe extern "C" fn ready_entry(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    crate::fastcall::entry(|py| {
        // SAFETY: the function object made in `ready_callback` passes the
        // `SockCall` it was made for as `slf`.
        let me = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<SockCall>() };
        SockCall::ready(&me)?;
        Ok(py.None())
    })
}

/// The callback the loop runs for a wait: a built-in function bound to
/// the `SockCall` (`_ready`), made without looking up an attribute.
fn ready_callback<'py>(slf: &Bound<'py, SockCall>) -> PyResult<Bound<'py, PyAny>> {
    let def = READY_DEF.get_or_init(|| {
        ReadyDef(ffi::PyMethodDef {
            ml_name: c"_ready".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunction: ready_entry,
            },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: c"The socket is ready: make the call again.".as_ptr(),
        })
    });
    let def = std::ptr::from_ref(&def.0).cast_mut();
    // SAFETY: `def` lives for ever and CPython only reads it; the new
    // function holds a reference to `slf`; the result is a new reference
    // or NULL with an error set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            slf.py(),
            ffi::PyCFunction_NewEx(def, slf.as_ptr(), std::ptr::null_mut()),
        )
    }
}

/// Stop watching for a wait that ended, unless its registration was
/// replaced meanwhile (its handle is then cancelled): asyncio's
/// `_sock_read_done` / `_sock_write_done`.
/// `fired`: it ended in its callback, run for an event.
fn end_wait(py: Python<'_>, wait: Option<Wait>, fired: bool) -> PyResult<()> {
    let Some(w) = wait else {
        return Ok(());
    };
    if w.handle.get().is_cancelled() {
        return Ok(());
    }
    LoopCore::end_watch(w.lp.bind(py), w.fd, w.write, fired)
}

/// asyncio's `_ensure_fd_no_transport(fd)`, skipped when the loop has no
/// transport at all (its `WeakValueDictionary` holds none).
fn ensure_no_transport(lp: &Bound<'_, LoopCore>, fd: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = lp.py();
    let transports = lp.getattr(intern!(py, "_transports"))?;
    let none = transports
        .getattr(intern!(py, "data"))
        .ok()
        .and_then(|d| d.cast_into::<pyo3::types::PyDict>().ok())
        .is_some_and(|d| d.is_empty());
    if !none {
        lp.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    }
    Ok(())
}

/// The errors after which asyncio waits and tries again.
fn would_block(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PyBlockingIOError>(py) || e.is_instance_of::<PyInterruptedError>(py)
}

/// What the first socket call did.
enum First {
    /// The operation is complete, with this result.
    Done(Py<PyAny>),
    /// It would block, or sent only part: the count sent (0 for the
    /// reads), for the wait that goes on.
    Blocked(usize),
}

/// A thrown exception as `throw(typ[, val[, tb]])` describes it.
fn thrown(args: &Bound<'_, PyTuple>) -> PyResult<PyErr> {
    let typ = args.get_item(0)?;
    if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        return Ok(PyErr::from_value(typ));
    }
    let val = args.get_item(1).ok().filter(|v| !v.is_none());
    let exc = match val {
        Some(v) if v.is_instance(&typ)? => v,
        Some(v) => typ.call1((v,))?,
        None => typ.call0()?,
    };
    Ok(PyErr::from_value(exc))
}

#[pymethods]
impl SockCall {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Self::send(slf, &slf.py().None().into_bound(slf.py()))
    }

    #[pyo3(signature = (value, /))]
    fn send(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match Self::step(slf, value)? {
            Step::Yield(v) => Ok(v),
            Step::Return(v) => Err(pyo3::exceptions::PyStopIteration::new_err((v,))),
        }
    }

    #[pyo3(signature = (*args))]
    fn throw(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        let state = std::mem::replace(&mut *self.state.borrow_mut(py), State::Done);
        match state {
            State::Waiting { iter, wait } => {
                match iter.bind(py).call_method1(intern!(py, "throw"), args) {
                    Ok(r) => {
                        *self.state.borrow_mut(py) = State::Waiting { iter, wait };
                        Ok(r.unbind())
                    }
                    Err(e) => {
                        end_wait(py, wait, false)?;
                        Err(e)
                    }
                }
            }
            // Thrown in before the start, or after the end: it comes back
            // out, as from a coroutine in those states.
            State::Start { .. } | State::Done => Err(thrown(args)?),
        }
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let state = std::mem::replace(&mut *self.state.borrow_mut(py), State::Done);
        if let State::Waiting { iter, wait } = state {
            end_wait(py, wait, false)?;
            iter.bind(py).call_method0(intern!(py, "close"))?;
        }
        Ok(())
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        self.op.name()
    }

    #[getter]
    fn __qualname__(&self) -> String {
        format!("BaseSelectorEventLoop.{}", self.op.name())
    }

    #[getter]
    fn cr_await(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &*self.state.borrow(py) {
            State::Waiting { iter, .. } => Some(iter.clone_ref(py)),
            _ => None,
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(st) = self.state.gc_borrow() {
            match &*st {
                State::Start { lp, sock, arg } => {
                    visit.call(lp)?;
                    visit.call(sock)?;
                    visit.call(arg)?;
                }
                State::Waiting { iter, wait } => {
                    visit.call(iter)?;
                    if let Some(w) = wait {
                        visit.call(&w.lp)?;
                        visit.call(&w.fut)?;
                        visit.call(&w.sock)?;
                        visit.call(&w.arg)?;
                        visit.call(&w.handle)?;
                    }
                }
                State::Done => {}
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let old = self
            .state
            .gc_borrow_mut()
            .map(|mut s| std::mem::replace(&mut *s, State::Done));
        drop(old);
    }
}

/// The type's `am_send`: a step without a `StopIteration` for the result.
unsafe extern "C" fn am_send(
    slf: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: CPython calls a type's slot with the thread attached.
    let py = unsafe { Python::assume_attached() };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `slf` is an instance of the type whose slot this is, and
        // `value` a live object (CPython passes None for a plain next).
        let (me, value) = unsafe {
            (
                Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<SockCall>(),
                Bound::from_borrowed_ptr(py, value),
            )
        };
        SockCall::step(&me, &value)
    }));
    match outcome {
        Ok(Ok(Step::Yield(v))) => {
            // SAFETY: `result` is CPython's out pointer; it takes the new
            // reference.
            unsafe { *result = v.into_ptr() };
            ffi::PySendResult::PYGEN_NEXT
        }
        Ok(Ok(Step::Return(v))) => {
            // SAFETY: as above.
            unsafe { *result = v.into_ptr() };
            ffi::PySendResult::PYGEN_RETURN
        }
        Ok(Err(e)) => {
            e.restore(py);
            ffi::PySendResult::PYGEN_ERROR
        }
        Err(payload) => {
            crate::fastcall::panic_error(payload).restore(py);
            ffi::PySendResult::PYGEN_ERROR
        }
    }
}

/// Give `SockCall` its `am_send` slot (pyo3 has no way to declare it).
pub fn install(ty: &Bound<'_, PyType>) -> PyResult<()> {
    let tp = ty.as_type_ptr();
    // SAFETY: `tp` is a live heap type made by pyo3 with an `__await__`,
    // so `tp_as_async` points at the type's own (writable) async methods
    // table; setting a slot before any instance exists, then telling the
    // type system it changed, is how C extensions fill slots late.
    unsafe {
        let asy = (*tp).tp_as_async;
        if asy.is_null() {
            return Err(PyRuntimeError::new_err(
                "SockCall has no async methods table",
            ));
        }
        (*asy).am_send = Some(am_send);
        ffi::PyType_Modified(tp);
    }
    Ok(())
}
