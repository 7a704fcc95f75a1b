//! The scheduling methods (`call_soon`, `call_soon_threadsafe`,
//! `call_later`, `call_at`) and the `sock_*` methods that return a
//! [`SockCall`] as plain `METH_FASTCALL | METH_KEYWORDS` C functions,
//! installed on `LoopCore` (over the `#[pymethods]` ones of the same name
//! where there are some).
//!
//! `call_soon` is the loop's hottest entry point: asyncio's C `Future` and
//! `Task` call it for every done callback and every step. pyo3's generated
//! wrapper for a `(callback, *args, context=None)` signature runs its
//! general argument parser, two trampolines and a thread-local lookup on
//! each call, about 190 instructions; the shapes here are fixed, so the
//! parse below does the same checks in a few dozen. A wrong call gets
//! asyncio's `TypeError`, word for word (its methods are
//! `BaseEventLoop`'s), and a panic still becomes a `PanicException`.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyAttributeError, PyResourceWarning, PyTypeError, PyValueError};
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use std::sync::atomic::{AtomicIsize, Ordering};

use crate::selector::sel::SockTransport;
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::loop_core::LoopCore;
use crate::proactor::stream::RingStreamCore;
use crate::selector::datagram::DatagramCore;
use crate::selector::stream::StreamCore;
use crate::sock_ops::{Op, SockCall};

/// The arguments of a call, as [`parse`] found them.
struct Parsed<'py> {
    /// The named parameters' arguments, in order (`callback`; `delay` or
    /// `when` then `callback`; `sock` then `n`, `buf` or `data`).
    fixed: [Option<Bound<'py, PyAny>>; 2],
    args: Bound<'py, PyTuple>,
    context: Option<Bound<'py, PyAny>>,
}

/// A method's parameters: `qualname(names[0], ..)`, and with `varargs`
/// `qualname(names[0], .., *args, context=None)`.
struct Shape {
    /// What asyncio's messages call the method.
    qualname: &'static str,
    names: &'static [&'static str],
    varargs: bool,
}

/// Parse a vectorcall of a method of this `shape`; the named parameters may
/// also come by keyword when no `*args` follow.
///
/// # Safety
/// `args` points to `nargs` live objects followed by one per name in
/// `kwnames` (a tuple of `str`, or NULL), as CPython passes them.
#[inline(always)]
unsafe fn parse<'py>(
    py: Python<'py>,
    shape: &Shape,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Parsed<'py>> {
    // SAFETY: `nargsf` is the count CPython passed, with its flag bit.
    let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
    // SAFETY: the caller's contract: `nargs` live objects at `args`.
    let positional = unsafe { std::slice::from_raw_parts(args, nargs) };
    let names = shape.names;
    let fits = if shape.varargs {
        nargs >= names.len()
    } else {
        nargs == names.len()
    };
    if kwnames.is_null() && fits {
        // The common calls: positional arguments only.
        let (named, rest) = positional.split_at(names.len());
        // SAFETY: `named` holds `names.len()` (1 or 2) live objects, and
        // `rest` live objects of the call.
        let (fixed, args) = unsafe {
            (
                [
                    Some(Bound::from_borrowed_ptr(py, named[0])),
                    named.get(1).map(|&p| Bound::from_borrowed_ptr(py, p)),
                ],
                tuple_of(py, rest)?,
            )
        };
        return Ok(Parsed {
            fixed,
            args,
            context: None,
        });
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { parse_general(py, shape, positional, args, kwnames) }
}

/// [`parse`] for every other shape of call.
///
/// # Safety
/// As for [`parse`]; `positional` is the call's positional arguments.
#[inline(never)]
unsafe fn parse_general<'py>(
    py: Python<'py>,
    shape: &Shape,
    positional: &[*mut ffi::PyObject],
    args: *const *mut ffi::PyObject,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Parsed<'py>> {
    let (name, names) = (shape.qualname, shape.names);
    let nargs = positional.len();
    if !shape.varargs && nargs > names.len() {
        // Counted with `self`, as Python's own message counts them.
        return Err(PyTypeError::new_err(format!(
            "{name}() takes {} positional arguments but {} were given",
            names.len() + 1,
            nargs + 1
        )));
    }
    let mut fixed: [Option<Bound<'py, PyAny>>; 2] = [None, None];
    for (slot, &p) in fixed.iter_mut().take(names.len()).zip(positional) {
        // SAFETY: `p` is a live object of the call (borrowed; cloned here).
        *slot = Some(unsafe { Bound::from_borrowed_ptr(py, p) });
    }
    let rest = positional.get(names.len()..).unwrap_or(&[]);
    // SAFETY: every pointer in `rest` is a live object of the call.
    let varargs = unsafe { tuple_of(py, rest)? };
    let mut context = None;
    if !kwnames.is_null() {
        // SAFETY: `kwnames` is the call's tuple of keyword names.
        let kw = unsafe { Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>() };
        for (i, key) in kw.iter().enumerate() {
            // SAFETY: the values follow the positional arguments, one per
            // name.
            let value = unsafe { Bound::from_borrowed_ptr(py, *args.add(nargs + i)) };
            let key = key.cast_into::<PyString>()?;
            let key = key.to_str()?;
            if shape.varargs && key == "context" {
                context = Some(value);
                continue;
            }
            match names.iter().position(|n| *n == key) {
                Some(at) if fixed[at].is_none() => fixed[at] = Some(value),
                Some(_) => {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got multiple values for argument '{key}'"
                    )))
                }
                None => {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got an unexpected keyword argument '{key}'"
                    )))
                }
            }
        }
    }
    let missing: Vec<_> = names
        .iter()
        .zip(&fixed)
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| format!("'{n}'"))
        .collect();
    if !missing.is_empty() {
        let (count, plural) = (missing.len(), if missing.len() == 1 { "" } else { "s" });
        return Err(PyTypeError::new_err(format!(
            "{name}() missing {count} required positional argument{plural}: {}",
            missing.join(" and ")
        )));
    }
    // `context=None` is no context given.
    let context = context.filter(|c| !c.is_none());
    Ok(Parsed {
        fixed,
        args: varargs,
        context,
    })
}

/// A new tuple of `items`.
///
/// # Safety
/// Every pointer in `items` is a live object.
#[inline]
unsafe fn tuple_of<'py>(
    py: Python<'py>,
    items: &[*mut ffi::PyObject],
) -> PyResult<Bound<'py, PyTuple>> {
    if items.is_empty() {
        return Ok(PyTuple::empty(py));
    }
    // SAFETY: PyTuple_New returns a new tuple of that length (its slots
    // NULL) or NULL with an error set; each slot is filled once, with a
    // new reference to a live object (the caller's contract), before the
    // tuple is seen by anyone.
    unsafe {
        let t = ffi::PyTuple_New(items.len() as ffi::Py_ssize_t);
        if t.is_null() {
            return Err(PyErr::fetch(py));
        }
        for (i, &p) in items.iter().enumerate() {
            ffi::Py_INCREF(p);
            ffi::PyTuple_SET_ITEM(t, i as ffi::Py_ssize_t, p);
        }
        Ok(Bound::from_owned_ptr(py, t).cast_into_unchecked())
    }
}

/// Run `body` as the C function's body: its result as a new reference, or
/// NULL with the error (a panic as `PanicException`) set.
#[inline(always)]
pub(crate) fn entry(body: impl FnOnce(Python<'_>) -> PyResult<Py<PyAny>>) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a method's C function with the thread attached.
    let py = unsafe { Python::assume_attached() };
    match catch_unwind(AssertUnwindSafe(|| body(py))) {
        Ok(Ok(obj)) => obj.into_ptr(),
        Ok(Err(e)) => {
            e.restore(py);
            std::ptr::null_mut()
        }
        Err(payload) => {
            panic_error(payload).restore(py);
            std::ptr::null_mut()
        }
    }
}

#[cold]
pub(crate) fn panic_error(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let msg = if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "panic from Rust code".to_owned()
    };
    PanicException::new_err((msg,))
}

/// `slf` as the loop it is.
///
/// # Safety
/// `slf` is the `self` CPython passed to a method descriptor of
/// `LoopCore`, which checked that it is an instance of it (or of a
/// subclass).
unsafe fn this<'py>(py: Python<'py>, slf: *mut ffi::PyObject) -> Bound<'py, LoopCore> {
    // SAFETY: the caller's contract.
    unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>() }
}

macro_rules! fastcall {
    ($fn_name:ident, $qualname:literal, [$($param:literal),+], $varargs:literal, |$lp:ident, $p:ident| $body:expr) => {
        unsafe extern "C" fn $fn_name(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargsf: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            const SHAPE: Shape = Shape {
                qualname: $qualname,
                names: &[$($param),+],
                varargs: $varargs,
            };
            entry(|py| {
                // SAFETY: CPython calls this through the method descriptor
                // made in `install`, which checks `slf`'s type, with the
                // call's arguments laid out as `parse` expects.
                let ($lp, $p) = unsafe { (this(py, slf), parse(py, &SHAPE, args, nargsf, kwnames)?) };
                $body
            })
        }
    };
}

fastcall!(
    call_soon,
    "BaseEventLoop.call_soon",
    ["callback"],
    true,
    |lp, p| {
        let [callback, _] = p.fixed;
        let callback = callback.expect("parse checked it");
        Ok(LoopCore::call_soon(&lp, callback, p.args, p.context)?.into_any())
    }
);

fastcall!(
    call_soon_threadsafe,
    "BaseEventLoop.call_soon_threadsafe",
    ["callback"],
    true,
    |lp, p| {
        let [callback, _] = p.fixed;
        let callback = callback.expect("parse checked it");
        Ok(LoopCore::call_soon_threadsafe(&lp, callback, p.args, p.context)?.into_any())
    }
);

fastcall!(
    call_later,
    "BaseEventLoop.call_later",
    ["delay", "callback"],
    true,
    |lp, p| {
        let [Some(delay), Some(callback)] = p.fixed else {
            unreachable!("parse checked them")
        };
        Ok(LoopCore::call_later(&lp, &delay, callback, p.args, p.context)?.into_any())
    }
);

fastcall!(
    call_at,
    "BaseEventLoop.call_at",
    ["when", "callback"],
    true,
    |lp, p| {
        let [Some(when), Some(callback)] = p.fixed else {
            unreachable!("parse checked them")
        };
        Ok(LoopCore::call_at(&lp, &when, callback, p.args, p.context)?.into_any())
    }
);

/// A `sock_*` call's awaitable, from its parsed `(sock, arg)`.
fn sock_call(lp: &Bound<'_, LoopCore>, op: Op, p: Parsed<'_>) -> PyResult<Py<PyAny>> {
    let [Some(sock), Some(arg)] = p.fixed else {
        unreachable!("parse checked them")
    };
    Ok(SockCall::new(lp.py(), op, lp, &sock, &arg)?.into_any())
}

fastcall!(
    sock_recv,
    "BaseSelectorEventLoop.sock_recv",
    ["sock", "n"],
    false,
    |lp, p| sock_call(&lp, Op::Recv, p)
);

fastcall!(
    sock_recv_into,
    "BaseSelectorEventLoop.sock_recv_into",
    ["sock", "buf"],
    false,
    |lp, p| sock_call(&lp, Op::RecvInto, p)
);

fastcall!(
    sock_sendall,
    "BaseSelectorEventLoop.sock_sendall",
    ["sock", "data"],
    false,
    |lp, p| sock_call(&lp, Op::SendAll, p)
);

type FastFn = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

const METHODS: [(&CStr, FastFn, &CStr); 7] = [
    (
        c"call_soon",
        call_soon,
        c"call_soon($self, callback, *args, context=None)\n--\n\n",
    ),
    (
        c"call_soon_threadsafe",
        call_soon_threadsafe,
        c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\n",
    ),
    (
        c"call_later",
        call_later,
        c"call_later($self, delay, callback, *args, context=None)\n--\n\n",
    ),
    (
        c"call_at",
        call_at,
        c"call_at($self, when, callback, *args, context=None)\n--\n\n",
    ),
    (
        c"sock_recv",
        sock_recv,
        c"sock_recv($self, sock, n)\n--\n\nasyncio's sock_recv, as a native awaitable.",
    ),
    (
        c"sock_recv_into",
        sock_recv_into,
        c"sock_recv_into($self, sock, buf)\n--\n\nasyncio's sock_recv_into, as a native awaitable.",
    ),
    (
        c"sock_sendall",
        sock_sendall,
        c"sock_sendall($self, sock, data)\n--\n\nasyncio's sock_sendall, as a native awaitable.",
    ),
];

/// `write`'s parameters, as asyncio's `_SelectorSocketTransport.write`
/// (whose argument errors a wrong call gets).
const WRITE_SHAPE: Shape = Shape {
    qualname: "_SelectorSocketTransport.write",
    names: &["data"],
    varargs: false,
};

/// `write(data)` with asyncio's argument errors (its transports' `write` is
/// a Python method of `_SelectorSocketTransport`), on a stream core; a core
/// of another type (a test's stand-in) gets its own `write` called.
///
/// # Safety
/// `args`, `nargsf` and `kwnames` are a vectorcall's, as CPython passed them.
#[inline(always)]
unsafe fn write_on(
    py: Python<'_>,
    core: &Bound<'_, PyAny>,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Py<PyAny>> {
    // SAFETY: the caller's contract: the call's arguments as `parse`
    // expects them.
    let p = unsafe { parse(py, &WRITE_SHAPE, args, nargsf, kwnames)? };
    let [Some(data), _] = p.fixed else {
        unreachable!("parse checked it")
    };
    if let Ok(c) = core.cast::<StreamCore>() {
        StreamCore::write(c, &data)?;
    } else if let Ok(c) = core.cast::<RingStreamCore>() {
        RingStreamCore::write(c, &data)?;
    } else {
        core.call_method1(pyo3::intern!(py, "write"), (data,))?;
    }
    Ok(py.None())
}

/// `write(data)` of a stream core (`StreamCore` or `RingStreamCore`).
unsafe extern "C" fn core_write(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| {
        // SAFETY: CPython calls this through the method descriptors made
        // in `install_cores`, with `slf` a live core and the call's
        // arguments as it passes them.
        unsafe {
            write_on(
                py,
                &Bound::from_borrowed_ptr(py, slf),
                args,
                nargsf,
                kwnames,
            )
        }
    })
}

/// Where the stream transport classes keep their core (their `_core`
/// slot), in bytes from the start of the object; 0 until
/// [`_install_transport_methods`] has read it off the slot's descriptor.
static STREAM_SLOT: AtomicIsize = AtomicIsize::new(0);
/// The same for the datagram transport class.
static DGRAM_SLOT: AtomicIsize = AtomicIsize::new(0);

fn slot_of(datagram: bool) -> &'static AtomicIsize {
    if datagram {
        &DGRAM_SLOT
    } else {
        &STREAM_SLOT
    }
}

/// The core in a transport's `_core` slot, None while the slot is empty
/// (before `__init__` filled it).
///
/// # Safety
/// `slf` is an instance of a class [`_install_transport_methods`] was given
/// for this `datagram` kind (or of a subclass, which keeps the slot where
/// it is), as the method descriptors made there check before they call.
unsafe fn slot_core<'py>(
    py: Python<'py>,
    slf: *mut ffi::PyObject,
    datagram: bool,
) -> Option<Bound<'py, PyAny>> {
    let off = slot_of(datagram).load(Ordering::Relaxed);
    // SAFETY: `off` is the offset of an object slot of `slf`'s class (the
    // caller's contract; it is set before any descriptor that calls this
    // exists), so a pointer-sized, aligned field of the live object.
    let core = unsafe { *slf.cast::<u8>().offset(off).cast::<*mut ffi::PyObject>() };
    // SAFETY: a non-null object slot holds a strong reference, which the
    // object keeps for the length of this call.
    (!core.is_null()).then(|| unsafe { Bound::from_borrowed_ptr(py, core) })
}

/// [`slot_core`], with the `AttributeError` a missing attribute gets when
/// the slot is empty.
///
/// # Safety
/// As for [`slot_core`].
unsafe fn core_in_slot<'py>(
    py: Python<'py>,
    slf: *mut ffi::PyObject,
    datagram: bool,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the caller's contract, passed on.
    if let Some(core) = unsafe { slot_core(py, slf, datagram) } {
        return Ok(core);
    }
    // SAFETY: `slf` is a live object.
    let ty = unsafe { Bound::from_borrowed_ptr(py, slf) }.get_type();
    Err(PyAttributeError::new_err(format!(
        "'{}' object has no attribute '_core'",
        ty.name()?
    )))
}

/// A stream transport's `write(data)`: its core's, straight from the slot.
unsafe extern "C" fn transport_write(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| {
        // SAFETY: called through a descriptor `_install_transport_methods`
        // made for stream transports, which checks `slf`'s class, with the
        // call's arguments as CPython passes them.
        unsafe { write_on(py, &core_in_slot(py, slf, false)?, args, nargsf, kwnames) }
    })
}

/// `obj.name(...)` with a vectorcall's arguments.
///
/// # Safety
/// `args`, `nargsf` and `kwnames` are a vectorcall's, as CPython passed them.
unsafe fn call_method(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Py<PyAny>> {
    let method = obj.getattr(name)?;
    // SAFETY: the caller's contract; the result is a new reference or NULL
    // with an error set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyObject_Vectorcall(method.as_ptr(), args, nargsf as usize, kwnames),
        )
    }
    .map(Bound::unbind)
}

/// A datagram transport's `sendto(data, addr=None)`: its core's, straight
/// from the slot. Calls of another shape go to the core's own method, and
/// so get its argument errors, as before.
unsafe extern "C" fn transport_sendto(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| {
        // SAFETY: called through a descriptor `_install_transport_methods`
        // made for datagram transports, which checks `slf`'s class.
        let core = unsafe { core_in_slot(py, slf, true)? };
        // SAFETY: `nargsf` is the count CPython passed, with its flag bit.
        let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
        if let (true, 1..=2, Ok(c)) = (kwnames.is_null(), nargs, core.cast::<DatagramCore>()) {
            // SAFETY: CPython passes `nargs` live objects at `args`.
            let (data, addr) = unsafe {
                (
                    Bound::from_borrowed_ptr(py, *args),
                    (nargs == 2).then(|| Bound::from_borrowed_ptr(py, *args.add(1))),
                )
            };
            DatagramCore::sendto(c, &data, addr.filter(|a| !a.is_none()))?;
            return Ok(py.None());
        }
        // SAFETY: the call's own arguments, passed on unchanged.
        unsafe {
            call_method(
                py,
                &core,
                pyo3::intern!(py, "sendto"),
                args,
                nargsf,
                kwnames,
            )
        }
    })
}

/// A stream transport's `__init__(loop, sock, protocol, waiter=None,
/// extra=None, server=None)` ([`crate::accepted::stream_transport_init`])
/// without the Python frame every connection paid. Calls of another shape
/// (other keywords, too few or too many arguments) go to the class's
/// Python `_py_init`, and so get its argument errors.
unsafe extern "C" fn transport_init(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| {
        // SAFETY: `slf` is a live object for the length of the call.
        let me = unsafe { Bound::from_borrowed_ptr(py, slf) };
        // SAFETY: `nargsf` is the count CPython passed, with its flag bit.
        let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
        // The keywords this fast path knows, after the positional ones.
        const OPTIONAL: [&str; 3] = ["waiter", "extra", "server"];
        let mut given: [Option<Bound<'_, PyAny>>; 6] = Default::default();
        let mut shape_ok = (3..=6).contains(&nargs);
        if shape_ok {
            for (i, slot) in given.iter_mut().enumerate().take(nargs) {
                // SAFETY: CPython passes `nargs` live objects at `args`.
                *slot = Some(unsafe { Bound::from_borrowed_ptr(py, *args.add(i)) });
            }
            if !kwnames.is_null() {
                // SAFETY: `kwnames` is a live tuple of strings; their
                // values follow the positional arguments in `args`.
                let names = unsafe { Bound::from_borrowed_ptr(py, kwnames) };
                let names = names.cast::<PyTuple>()?;
                for (k, name) in names.iter().enumerate() {
                    let at = OPTIONAL
                        .iter()
                        .position(|o| name.cast::<PyString>().is_ok_and(|n| n == *o))
                        .map(|p| p + 3);
                    match at {
                        Some(at) if given[at].is_none() => {
                            // SAFETY: keyword values follow the positional
                            // ones, one per name.
                            given[at] =
                                Some(unsafe { Bound::from_borrowed_ptr(py, *args.add(nargs + k)) });
                        }
                        _ => shape_ok = false,
                    }
                }
            }
        }
        if !shape_ok {
            // SAFETY: the call's own arguments, passed on unchanged.
            return unsafe {
                call_method(
                    py,
                    &me,
                    pyo3::intern!(py, "_py_init"),
                    args,
                    nargsf,
                    kwnames,
                )
            };
        }
        let none = py.None().into_bound(py);
        let [loop_, sock, protocol, waiter, extra, server] = given;
        let (Some(loop_), Some(sock), Some(protocol)) = (loop_, sock, protocol) else {
            unreachable!("three positional arguments at least")
        };
        crate::accepted::stream_transport_init(
            &me,
            &loop_,
            &sock,
            &protocol,
            waiter.as_ref().unwrap_or(&none),
            extra.filter(|e| !e.is_none()),
            server.as_ref().unwrap_or(&none),
        )?;
        Ok(py.None())
    })
}

/// A transport's `is_closing()`: its core's, straight from the slot.
unsafe extern "C" fn transport_is_closing<const DATAGRAM: bool>(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| {
        // SAFETY: called through a descriptor `_install_transport_methods`
        // made for this kind of transport, which checks `slf`'s class.
        let core = unsafe { core_in_slot(py, slf, DATAGRAM)? };
        let closing = if let Ok(c) = core.cast::<StreamCore>() {
            SockTransport::sel(c.get()).borrow(py).closing
        } else if let Ok(c) = core.cast::<RingStreamCore>() {
            SockTransport::sel(c.get()).borrow(py).closing
        } else if let Ok(c) = core.cast::<DatagramCore>() {
            SockTransport::sel(c.get()).borrow(py).closing
        } else {
            return Ok(core.call_method0(pyo3::intern!(py, "is_closing"))?.unbind());
        };
        Ok(pyo3::types::PyBool::new(py, closing)
            .to_owned()
            .into_any()
            .unbind())
    })
}

/// `warnings.warn`, taken when the methods are installed: a transport may
/// be finalised while the interpreter shuts down, when importing no
/// longer works (the Python `__del__` this replaces bound it as a default
/// argument for the same reason).
static WARN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A transport's `__del__`, as asyncio's socket transports have it: one
/// still holding its socket warns (`ResourceWarning`, with the transport
/// as the source) and closes the socket. Without a Python frame, as every
/// connection's transport ends here.
unsafe extern "C" fn transport_del<const DATAGRAM: bool>(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| {
        // SAFETY: called through a descriptor `_install_transport_methods`
        // made for this kind of transport, which checks `slf`'s class.
        let Some(core) = (unsafe { slot_core(py, slf, DATAGRAM) }) else {
            return Ok(py.None()); // never initialised
        };
        // SAFETY: `slf` is a live object for the length of the call.
        let me = unsafe { Bound::from_borrowed_ptr(py, slf) };
        if let Ok(c) = core.cast::<StreamCore>() {
            finalize(&me, c.get())?;
        } else if let Ok(c) = core.cast::<RingStreamCore>() {
            finalize(&me, c.get())?;
        } else if let Ok(c) = core.cast::<DatagramCore>() {
            finalize(&me, c.get())?;
        }
        Ok(py.None())
    })
}

fn finalize<T: SockTransport>(transport: &Bound<'_, PyAny>, core: &T) -> PyResult<()> {
    let py = transport.py();
    if core.sel().borrow(py).sock.is_none() {
        return Ok(());
    }
    unclosed_warning(transport)?;
    crate::selector::sel::close_sock(core, py)
}

#[cold]
fn unclosed_warning(transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    let Some(warn) = WARN.get(py) else {
        return Ok(());
    };
    let kwargs = PyDict::new(py);
    kwargs.set_item("source", transport)?;
    warn.bind(py).call(
        (
            format!("unclosed transport {}", transport.repr()?),
            py.get_type::<PyResourceWarning>(),
        ),
        Some(&kwargs),
    )?;
    Ok(())
}

/// Give transport classes their hot methods as C methods that reach the
/// core through the class's `_core` slot: `write` and `is_closing` for
/// stream transports, `sendto` and `is_closing` with `datagram`.
///
/// A bound method of the core set on each instance (what the transports
/// did before) costs no Python frame, but an instance attribute that
/// shadows a class attribute keeps CPython from specialising the
/// `transport.write` lookup: every call paid its generic attribute search,
/// about 200 instructions. A method of the class itself takes the
/// specialised path. Every class given for one kind must have the same
/// `_core` slot (a subclass inherits its base's).
#[pyfunction]
#[pyo3(signature = (classes, datagram = false))]
pub fn _install_transport_methods(classes: Vec<Bound<'_, PyType>>, datagram: bool) -> PyResult<()> {
    for cls in classes {
        let py = cls.py();
        // The class attribute is the slot's descriptor, its own or a base's.
        let slot = cls.getattr("_core")?;
        let member_type = py.import("types")?.getattr("MemberDescriptorType")?;
        if !slot.get_type().is(&member_type) {
            return Err(PyTypeError::new_err("the class has no _core slot"));
        }
        // SAFETY: `slot` is a member descriptor (checked above), whose
        // definition lives as long as its class.
        let (off, kind) = unsafe {
            let def = (*slot.as_ptr().cast::<ffi::PyMemberDescrObject>()).d_member;
            ((*def).offset, (*def).type_code)
        };
        if kind != ffi::Py_T_OBJECT_EX || off <= 0 {
            return Err(PyTypeError::new_err("_core is not an object slot"));
        }
        let known = slot_of(datagram).load(Ordering::Relaxed);
        if known != 0 && known != off {
            return Err(PyTypeError::new_err(
                "the classes keep _core in different places",
            ));
        }
        slot_of(datagram).store(off, Ordering::Relaxed);
        if datagram {
            put(
                &cls,
                c"sendto",
                ffi::PyMethodDefPointer {
                    PyCFunctionFastWithKeywords: transport_sendto,
                },
                ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
                c"sendto($self, data, addr=None)\n--\n\nSend one datagram, or buffer it.",
            )?;
        } else {
            put(
                &cls,
                c"__init__",
                ffi::PyMethodDefPointer {
                    PyCFunctionFastWithKeywords: transport_init,
                },
                ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
                c"__init__($self, loop, sock, protocol, waiter=None, extra=None, server=None)\n--\n\nSet the transport up on its socket and start it.",
            )?;
            put(
                &cls,
                c"write",
                ffi::PyMethodDefPointer {
                    PyCFunctionFastWithKeywords: transport_write,
                },
                ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
                c"write($self, data)\n--\n\nWrite the bytes, or buffer what the socket does not take now.",
            )?;
        }
        WARN.get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("warnings")?.getattr("warn")?.unbind())
        })?;
        let del = if datagram {
            transport_del::<true>
        } else {
            transport_del::<false>
        };
        put(
            &cls,
            c"__del__",
            ffi::PyMethodDefPointer { PyCFunction: del },
            ffi::METH_NOARGS,
            c"__del__($self)\n--\n\nWarn and close the socket if the transport was left open.",
        )?;
        let is_closing = if datagram {
            transport_is_closing::<true>
        } else {
            transport_is_closing::<false>
        };
        put(
            &cls,
            c"is_closing",
            ffi::PyMethodDefPointer {
                PyCFunction: is_closing,
            },
            ffi::METH_NOARGS,
            c"is_closing($self)\n--\n\nWhether the transport is closing or closed.",
        )?;
    }
    Ok(())
}

/// `StreamCore._read_ready()`, the reader callback of a selector stream
/// transport: called for every readiness, so without pyo3's wrapper.
unsafe extern "C" fn stream_read_ready(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| {
        // SAFETY: called through the method descriptor made for
        // `StreamCore` in `install_cores`, which checks `slf`'s type.
        let me = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<StreamCore>() };
        StreamCore::_read_ready(&me)?;
        Ok(py.None())
    })
}

/// The transports' hot methods in place of pyo3's wrappers: `write` on
/// both stream cores, `_read_ready` on the selector's.
pub fn install_cores(py: Python<'_>) -> PyResult<()> {
    let write_doc =
        c"write($self, data)\n--\n\nWrite the bytes, or buffer what the socket does not take now.";
    let fast = |f: FastFn| ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: f,
    };
    let kw = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;
    put(
        &py.get_type::<StreamCore>(),
        c"write",
        fast(core_write),
        kw,
        write_doc,
    )?;
    put(
        &py.get_type::<RingStreamCore>(),
        c"write",
        fast(core_write),
        kw,
        write_doc,
    )?;
    put(
        &py.get_type::<StreamCore>(),
        c"_read_ready",
        ffi::PyMethodDefPointer {
            PyCFunction: stream_read_ready,
        },
        ffi::METH_NOARGS,
        c"The socket is readable.",
    )
}

/// The method definitions [`put`] made, by address.
static DEFS: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// Put a C function on `ty` as the method `name`.
fn put(
    ty: &Bound<'_, PyType>,
    name: &'static CStr,
    meth: ffi::PyMethodDefPointer,
    flags: std::os::raw::c_int,
    doc: &'static CStr,
) -> PyResult<()> {
    let py = ty.py();
    // The descriptor keeps a pointer to its definition for as long as it
    // lives, which is the life of the type: leak one per method, once per
    // process (the module and `_transports` are initialised once). The
    // addresses are kept in `DEFS`, so a Python class freed as the
    // interpreter exits does not leave them unreachable (what memcheck
    // would count as lost).
    let def: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: meth,
        ml_flags: flags,
        ml_doc: doc.as_ptr(),
    }));
    DEFS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(std::ptr::from_mut(def) as usize);
    // SAFETY: `ty` is a live type object and `def` lives for ever;
    // PyDescr_NewMethod returns a new reference or NULL with an error set.
    let descr =
        unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))? };
    ty.setattr(
        name.to_str()
            .map_err(|e| PyValueError::new_err(e.to_string()))?,
        descr,
    )
}

/// Put the C functions above on `LoopCore` in place of pyo3's wrappers.
pub fn install(ty: &Bound<'_, PyType>) -> PyResult<()> {
    for (name, func, doc) in METHODS {
        put(
            ty,
            name,
            ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: func,
            },
            ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            doc,
        )?;
    }
    Ok(())
}
