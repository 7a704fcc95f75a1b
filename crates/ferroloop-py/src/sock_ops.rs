//! `sock_recv`, `sock_recv_into` and `sock_sendall` as native awaitables.
//!
//! asyncio's versions are `async def` methods whose common case is one
//! socket call: the data is already there, or the send goes out whole. In
//! that case most of their cost is being a coroutine (a frame made and
//! run) and the checks before the call, made in bytecode. Here the method
//! returns a [`SockCall`], a small object that speaks the coroutine
//! protocol and is registered as a `collections.abc.Coroutine` (so
//! `create_task` and `iscoroutine` accept it as they accept asyncio's).
//! Its first step makes the socket call (through the socket's own method,
//! so subclasses are honoured) and, when that completes the operation,
//! returns the result through the type's `am_send` slot: no frame, and no
//! `StopIteration` object.
//!
//! Everything else is asyncio's own code: in debug mode and for an
//! `ssl.SSLSocket` the step hands over to asyncio's coroutine for the
//! call; when the socket call would block (or sent only part), to a
//! coroutine of the loop (`_loop.py`) that waits as asyncio's does from
//! that point, with asyncio's own reader and writer callbacks. Every later
//! `send`, `throw` and `close` is relayed to it. So the errors, the waits
//! registered with the loop (and their clean-up when the socket is closed
//! under them) and cancellation are asyncio's.

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::cell::GilCell;
use crate::loop_core::LoopCore;

/// Which call: `sock_recv`, `sock_recv_into` or `sock_sendall`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Recv,
    RecvInto,
    SendAll,
}

impl Op {
    const ALL: [Op; 3] = [Op::Recv, Op::RecvInto, Op::SendAll];

    /// The socket method the operation calls.
    fn method(self, py: Python<'_>) -> &Bound<'_, PyString> {
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
    /// Handed over to asyncio's coroutine for the call.
    Waiting(Py<PyAny>),
    Done,
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
static PLAIN_SOCKET: PyOnceLock<PlainSocket> = PyOnceLock::new();
static ASYNCIO_OPS: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();

/// `socket.socket`, and the methods of `_socket.socket` it inherits,
/// in [`Op`] order, with the type's version tag when they were looked up.
struct PlainSocket {
    ty: Py<PyType>,
    methods: [Py<PyAny>; 3],
    tag: u32,
}

impl PlainSocket {
    fn get(py: Python<'_>) -> PyResult<&PlainSocket> {
        PLAIN_SOCKET.get_or_try_init(py, || {
            let ty = py
                .import("socket")?
                .getattr("socket")?
                .cast_into::<PyType>()?;
            // Looked up on `socket.socket` itself, which also gives the
            // type a valid version tag.
            let [a, b, c] = Op::ALL.map(|op| ty.getattr(op.method(py)));
            let methods = [a?.unbind(), b?.unbind(), c?.unbind()];
            let tag = Self::tag_of(&ty);
            Ok(PlainSocket {
                ty: ty.unbind(),
                methods,
                tag,
            })
        })
    }

    fn tag_of(ty: &Bound<'_, PyType>) -> u32 {
        // SAFETY: `ty` is a live type object; its version tag is a plain
        // field read under the GIL.
        unsafe { (*ty.as_type_ptr()).tp_version_tag }
    }

    /// True when `sock` is exactly a `socket.socket` and neither it nor a
    /// base changed since the methods were looked up (a changed type gets
    /// a new version tag, or none).
    fn is_exact(&self, py: Python<'_>, sock: &Bound<'_, PyAny>) -> bool {
        let ty = self.ty.bind(py);
        sock.get_type().is(ty) && self.tag != 0 && Self::tag_of(ty) == self.tag
    }
}

/// True when `sock`'s type is `socket.socket` itself (not a subclass or a
/// stand-in, whose methods may differ).
pub(crate) fn is_plain_socket(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = sock.py();
    Ok(sock.get_type().is(PlainSocket::get(py)?.ty.bind(py)))
}

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

    /// Send `value` in: the first step makes the call, later ones go to
    /// asyncio's coroutine.
    fn step(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Step> {
        let state = std::mem::replace(&mut *self.state.borrow_mut(py), State::Done);
        match state {
            State::Start { lp, sock, arg } => {
                if !value.is_none() {
                    *self.state.borrow_mut(py) = State::Start { lp, sock, arg };
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
                let coro = if plain {
                    match self.try_once(py, sock, arg, direct)? {
                        First::Done(result) => return Ok(Step::Return(result)),
                        // asyncio's wait from where its coroutine would be
                        // after that call (`_loop.py`), not the call again.
                        First::Blocked(sent) => Self::wait(py, self.op, lp, sock, arg, sent)?,
                    }
                } else {
                    asyncio_op(py, self.op)?.call1((lp, sock, arg))?
                };
                self.relay(py, coro.unbind(), value)
            }
            State::Waiting(coro) => self.relay(py, coro, value),
            State::Done => Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            )),
        }
    }

    /// The loop's wait for `op` after a first call that would block: the
    /// future's iterator, to relay the task's steps to.
    fn wait<'py>(
        py: Python<'py>,
        op: Op,
        lp: &Bound<'py, LoopCore>,
        sock: &Bound<'py, PyAny>,
        arg: &Bound<'py, PyAny>,
        sent: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fut = match op {
            Op::Recv => lp.call_method1(intern!(py, "_ff_recv_wait"), (sock, arg))?,
            Op::RecvInto => lp.call_method1(intern!(py, "_ff_recv_into_wait"), (sock, arg))?,
            Op::SendAll => lp.call_method1(intern!(py, "_ff_sendall_wait"), (sock, arg, sent))?,
        };
        fut.call_method0(intern!(py, "__await__"))
    }

    /// The socket call, made once (a plain socket's read: see below).
    /// `direct`: `sock` is a plain `socket.socket`, whose method is called
    /// as found on the type, without the attribute lookup.
    fn try_once<'py>(
        &self,
        py: Python<'py>,
        sock: &Bound<'py, PyAny>,
        arg: &Bound<'py, PyAny>,
        direct: Option<&PlainSocket>,
    ) -> PyResult<First<'py>> {
        let exact = direct.is_some();
        let called = if let Some(plain) = direct {
            let f = plain.methods[self.op as usize].as_ptr();
            let argv = [sock.as_ptr(), arg.as_ptr()];
            let call = || {
                // SAFETY: `f` is a live method descriptor and `argv` two
                // live objects for the duration of the call; the result is
                // a new reference or NULL with an error set.
                unsafe {
                    Bound::from_owned_ptr_or_err(
                        py,
                        ffi::PyObject_Vectorcall(f, argv.as_ptr(), 2, std::ptr::null_mut()),
                    )
                }
            };
            match call() {
                // A read that found nothing tries once more before the
                // wait. When the peer shares the CPU, the send just made
                // to it usually hands it the CPU on the way out of this
                // first call, and its answer is there for the second;
                // waiting instead costs a trip through the selector and a
                // sleep. (Only for the plain socket, whose calls nobody
                // observes; a subclass's method is called once, as
                // asyncio calls it.)
                Err(e) if self.op != Op::SendAll && would_block(py, &e) => call(),
                other => other,
            }
        } else {
            sock.call_method1(self.op.method(py), (arg,))
        };
        match called {
            Ok(r) if self.op != Op::SendAll => Ok(First::Done(r.unbind())),
            // asyncio compares the count sent with `len(data)`, and goes
            // on from `memoryview(data)[sent:]`. The socket module's `send`
            // returns an int; a subclass's may return anything, so it gets
            // Python's comparison.
            Ok(sent) => {
                let all = if exact {
                    sent.extract::<isize>()? == arg.len()? as isize
                } else {
                    sent.eq(arg.len()?)?
                };
                if all {
                    Ok(First::Done(py.None()))
                } else {
                    Ok(First::Blocked(sent))
                }
            }
            Err(e) if would_block(py, &e) => Ok(First::Blocked(0i32.into_pyobject(py)?.into_any())),
            Err(e) => Err(e),
        }
    }

    fn relay(&self, py: Python<'_>, coro: Py<PyAny>, value: &Bound<'_, PyAny>) -> PyResult<Step> {
        let mut out: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: `coro` and `value` are live objects; PyIter_Send stores a
        // new reference in `out` for NEXT and RETURN and sets an error for
        // ERROR.
        let status = unsafe { ffi::PyIter_Send(coro.as_ptr(), value.as_ptr(), &mut out) };
        if status == ffi::PySendResult::PYGEN_ERROR {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: for NEXT and RETURN, `out` is a new reference we now own.
        let out = unsafe { Bound::from_owned_ptr(py, out) }.unbind();
        if status == ffi::PySendResult::PYGEN_NEXT {
            *self.state.borrow_mut(py) = State::Waiting(coro);
            Ok(Step::Yield(out))
        } else {
            Ok(Step::Return(out))
        }
    }
}

/// The errors after which asyncio waits and tries again.
fn would_block(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PyBlockingIOError>(py) || e.is_instance_of::<PyInterruptedError>(py)
}

/// What the first socket call did.
enum First<'py> {
    /// The operation is complete, with this result.
    Done(Py<PyAny>),
    /// It would block, or sent only part: the count sent (0 for the
    /// reads), for the wait that goes on.
    Blocked(Bound<'py, PyAny>),
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

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.send(py, &py.None().into_bound(py))
    }

    #[pyo3(signature = (value, /))]
    fn send(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match self.step(py, value)? {
            Step::Yield(v) => Ok(v),
            Step::Return(v) => Err(pyo3::exceptions::PyStopIteration::new_err((v,))),
        }
    }

    #[pyo3(signature = (*args))]
    fn throw(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        let state = std::mem::replace(&mut *self.state.borrow_mut(py), State::Done);
        match state {
            State::Waiting(coro) => {
                let r = coro.bind(py).call_method1(intern!(py, "throw"), args)?;
                *self.state.borrow_mut(py) = State::Waiting(coro);
                Ok(r.unbind())
            }
            // Thrown in before the start, or after the end: it comes back
            // out, as from a coroutine in those states.
            State::Start { .. } | State::Done => Err(thrown(args)?),
        }
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let state = std::mem::replace(&mut *self.state.borrow_mut(py), State::Done);
        if let State::Waiting(coro) = state {
            coro.bind(py).call_method0(intern!(py, "close"))?;
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
            State::Waiting(coro) => Some(coro.clone_ref(py)),
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
                State::Waiting(coro) => visit.call(coro)?,
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
        me.get().step(py, &value)
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
