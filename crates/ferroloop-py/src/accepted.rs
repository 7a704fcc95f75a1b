//! What a new socket transport is built from, made natively: the
//! `socket.socket` of an accepted descriptor, the transport's `extra`
//! (with its `TransportSocket`), and the server's count of attached
//! transports.
//!
//! asyncio builds these with small Python functions (`socket.socket`'s
//! `__init__`, `TransportSocket.__init__`, `Server._attach` and
//! `_detach`), a Python frame each for every connection; ferroloop's
//! stream transports call their core class and its `_start` through
//! Python, and are themselves made by calling the class. Each is done
//! here the way the function does it, for exactly the standard class with
//! its type unchanged since it was looked at (a class whose attributes
//! were replaced gets a new version tag, or none); anything else gets the
//! Python function itself.

use pyo3::exceptions::{PyAssertionError, PyKeyboardInterrupt, PyOSError, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::loop_core::LoopCore;
use crate::proactor::stream::RingStreamCore;
use crate::selector::stream::StreamCore;

/// A class and its version tag when it was looked up.
struct Pinned {
    ty: Py<PyType>,
    tag: u32,
}

impl Pinned {
    fn new(ty: Bound<'_, PyType>) -> Pinned {
        let tag = tag_of(&ty);
        Pinned {
            ty: ty.unbind(),
            tag,
        }
    }

    /// `obj` is exactly of this class, and the class is unchanged.
    fn holds(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> bool {
        let ty = self.ty.bind(py);
        obj.get_type().is(ty) && self.unchanged(py)
    }

    fn unchanged(&self, py: Python<'_>) -> bool {
        self.tag != 0 && tag_of(self.ty.bind(py)) == self.tag
    }
}

fn tag_of(ty: &Bound<'_, PyType>) -> u32 {
    // SAFETY: `ty` is a live type object; its version tag is a plain field
    // read under the GIL.
    unsafe { (*ty.as_type_ptr()).tp_version_tag }
}

/// `socket.socket`, `asyncio.trsock.TransportSocket` and
/// `asyncio.base_events.Server`.
struct Classes {
    socket: Pinned,
    transport_socket: Pinned,
    server: Pinned,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || {
        let class = |module: &str, name: &str| -> PyResult<Pinned> {
            let ty = py.import(module)?.getattr(name)?.cast_into::<PyType>()?;
            // A lookup on the class gives it a valid version tag.
            ty.getattr("__init__")?;
            Ok(Pinned::new(ty))
        };
        Ok(Classes {
            socket: class("socket", "socket")?,
            transport_socket: class("asyncio.trsock", "TransportSocket")?,
            server: class("asyncio.base_events", "Server")?,
        })
    })
}

/// A new instance of `ty` from its `tp_new`, without `__init__`.
fn new_instance<'py>(
    py: Python<'py>,
    ty: &Bound<'py, PyType>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `ty` is a live type object; every class reaching here has a
    // `tp_new` (inherited from `object` or `_socket.socket`; a missing one
    // is an error, not a call), called with
    // a live tuple and no keywords, and returning a new reference or NULL
    // with an error set.
    unsafe {
        let new = (*ty.as_type_ptr())
            .tp_new
            .ok_or_else(|| pyo3::exceptions::PyTypeError::new_err("no tp_new"))?;
        Bound::from_owned_ptr_or_err(
            py,
            new(ty.as_type_ptr(), args.as_ptr(), std::ptr::null_mut()),
        )
    }
}

/// `socket.socket(family, type, proto, fileno=fd)`. For the standard
/// class, what its `__init__` does without its frame: `_socket.socket`'s
/// own initialisation (which checks the descriptor is a socket), then
/// `_io_refs = 0` and `_closed = False`.
#[pyfunction]
pub fn _socket_from_fd<'py>(
    py: Python<'py>,
    family: &Bound<'py, PyAny>,
    type_: &Bound<'py, PyAny>,
    proto: &Bound<'py, PyAny>,
    fd: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let c = classes(py)?;
    let ty = c.socket.ty.bind(py);
    if !c.socket.unchanged(py) {
        return ty.call1((family, type_, proto, fd));
    }
    // SAFETY: `socket.socket` is a live type whose base is `_socket.socket`.
    let Some(init) = (unsafe { (*(*ty.as_type_ptr()).tp_base).tp_init }) else {
        return ty.call1((family, type_, proto, fd));
    };
    let args = PyTuple::new(py, [family, type_, proto, fd])?;
    let sock = new_instance(py, ty, &args)?;
    // SAFETY: `init` is `_socket.socket`'s, which takes (family, type,
    // proto, fileno) as a tuple; `sock` is a fresh instance of the
    // subclass, and the call returns 0 or -1 with an error set.
    if unsafe { init(sock.as_ptr(), args.as_ptr(), std::ptr::null_mut()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    sock.setattr(pyo3::intern!(py, "_io_refs"), 0)?;
    sock.setattr(pyo3::intern!(py, "_closed"), false)?;
    Ok(sock)
}

/// `trsock.TransportSocket(sock)`: for the standard class, a new instance
/// with its one slot, `_sock`, set, as its `__init__` sets it.
fn transport_socket<'py>(sock: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    let c = classes(py)?;
    let ty = c.transport_socket.ty.bind(py);
    if !c.transport_socket.unchanged(py) {
        return ty.call1((sock,));
    }
    let t = new_instance(py, ty, &PyTuple::empty(py))?;
    t.setattr(pyo3::intern!(py, "_sock"), sock)?;
    Ok(t)
}

/// What asyncio's socket transports put in `extra`, and `BaseTransport`'s
/// part of `__init__` (the flow-control state is the core's): the
/// transport's `_extra` is `extra`, or a new dict, holding the socket (as
/// a `TransportSocket`), its `sockname` and, unless given, its `peername`,
/// each None where the system call fails.
#[pyfunction]
pub fn _init_socket_extra(
    transport: &Bound<'_, PyAny>,
    sock: &Bound<'_, PyAny>,
    extra: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    let py = transport.py();
    let extra = extra.unwrap_or_else(|| PyDict::new(py).into_any());
    transport.setattr(pyo3::intern!(py, "_extra"), &extra)?;
    extra.set_item(pyo3::intern!(py, "socket"), transport_socket(sock)?)?;
    let name = match crate::sockaddr::_sockname(sock) {
        Ok(n) => n.into_bound(py),
        Err(e) if e.is_instance_of::<PyOSError>(py) => py.None().into_bound(py),
        Err(e) => return Err(e),
    };
    extra.set_item(pyo3::intern!(py, "sockname"), name)?;
    let peername = pyo3::intern!(py, "peername");
    if !extra.contains(peername)? {
        let peer = match sock.call_method0(pyo3::intern!(py, "getpeername")) {
            Ok(p) => p,
            Err(e) if e.is_instance_of::<PyOSError>(py) => py.None().into_bound(py),
            Err(e) => return Err(e),
        };
        extra.set_item(peername, peer)?;
    }
    Ok(())
}

/// The standard `Server`, with neither method replaced on the instance.
fn plain_server(server: &Bound<'_, PyAny>, method: &Bound<'_, pyo3::types::PyString>) -> bool {
    let py = server.py();
    let Ok(c) = classes(py) else {
        return false;
    };
    if !c.server.holds(py, server) {
        return false;
    }
    match server.getattr(pyo3::intern!(py, "__dict__")) {
        Ok(d) => d
            .cast::<PyDict>()
            .is_ok_and(|d| !d.contains(method).unwrap_or(true)),
        Err(_) => false,
    }
}

/// `server._attach()`: for the standard `Server`, what it does, one more
/// transport counted (after asserting the server still has its sockets).
#[pyfunction]
pub fn _server_attach(server: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = server.py();
    let method = pyo3::intern!(py, "_attach");
    if !plain_server(server, method) {
        return server.call_method0(method).map(drop);
    }
    if server.getattr(pyo3::intern!(py, "_sockets"))?.is_none() {
        return Err(PyAssertionError::new_err(()));
    }
    let count = pyo3::intern!(py, "_active_count");
    let n = server.getattr(count)?.add(1)?;
    server.setattr(count, n)
}

/// `server._detach()`: for the standard `Server`, what it does, one
/// transport fewer counted, and the server's waiters woken when that was
/// the last one of a server that stopped serving.
pub fn server_detach(server: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = server.py();
    let method = pyo3::intern!(py, "_detach");
    if !plain_server(server, method) {
        return server.call_method0(method).map(drop);
    }
    let count = pyo3::intern!(py, "_active_count");
    let n = server.getattr(count)?;
    if !n.gt(0)? {
        return Err(PyAssertionError::new_err(()));
    }
    let n = n.sub(1)?;
    let last = n.eq(0)?;
    server.setattr(count, n)?;
    if last && server.getattr(pyo3::intern!(py, "_sockets"))?.is_none() {
        server.call_method0(pyo3::intern!(py, "_wakeup"))?;
    }
    Ok(())
}

/// asyncio runs each accepted connection's setup in a task, and so in a
/// copy of the context; ferroloop runs it in the accept callback, in a copy
/// made here: the protocol from `protocol_factory`, then the transport
/// (`transport_class(loop, conn, protocol, None, {"peername": addr},
/// server)`). An error other than `SystemExit` and `KeyboardInterrupt`
/// closes `conn` if no transport took it, and is reported to the loop's
/// exception handler in debug mode only, as asyncio's accept task reports
/// it.
#[pyfunction]
pub fn _accept_into(
    loop_: &Bound<'_, PyAny>,
    transport_class: &Bound<'_, PyAny>,
    protocol_factory: &Bound<'_, PyAny>,
    conn: &Bound<'_, PyAny>,
    addr: &Bound<'_, PyAny>,
    server: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = loop_.py();
    // The protocol, then the transport; what an error leaves to do.
    let set_up = || -> PyResult<()> {
        let mut protocol = None;
        let mut made = || -> PyResult<Bound<'_, PyAny>> {
            let p = protocol_factory.call0()?;
            protocol = Some(p.clone());
            let extra = PyDict::new(py);
            extra.set_item(pyo3::intern!(py, "peername"), addr)?;
            new_stream_transport(transport_class, loop_, conn, &p, extra, server)
        };
        let Err(exc) = made() else {
            return Ok(());
        };
        if exc.is_instance_of::<PySystemExit>(py) || exc.is_instance_of::<PyKeyboardInterrupt>(py) {
            return Err(exc);
        }
        // No transport was made (its constructor raised), so none took the
        // socket.
        conn.call_method0(pyo3::intern!(py, "close"))?;
        if loop_.getattr(pyo3::intern!(py, "_debug"))?.is_truthy()? {
            let context = PyDict::new(py);
            context.set_item(
                "message",
                "Error on transport creation for incoming connection",
            )?;
            context.set_item("exception", exc.value(py))?;
            if let Some(p) = protocol {
                context.set_item("protocol", p)?;
            }
            loop_.call_method1(pyo3::intern!(py, "call_exception_handler"), (context,))?;
        }
        Ok(())
    };
    // SAFETY: with the thread attached, PyContext_CopyCurrent returns a
    // new reference or NULL with an error set.
    let ctx = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())? };
    // SAFETY: `ctx` is a live, fresh context object, entered in this
    // thread and exited below before it is dropped.
    if unsafe { ffi::PyContext_Enter(ctx.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let made = set_up();
    // SAFETY: `ctx` is the context this thread entered above.
    if unsafe { ffi::PyContext_Exit(ctx.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    made
}

/// `_socket.socket`'s own `family`, `type` and `proto` (member descriptors
/// reading the plain ints; `socket.socket`'s properties make enums).
static RAW_SOCKET: PyOnceLock<(Py<PyType>, [Py<PyAny>; 3])> = PyOnceLock::new();

/// [`RAW_SOCKET`], looked up on first use.
pub(crate) fn raw_socket(py: Python<'_>) -> PyResult<&(Py<PyType>, [Py<PyAny>; 3])> {
    RAW_SOCKET.get_or_try_init(py, || {
        let base = py
            .import("_socket")?
            .getattr("socket")?
            .cast_into::<PyType>()?;
        let d = base.getattr("__dict__")?;
        let get = |n: &str| d.get_item(n).map(Bound::unbind);
        Ok::<_, PyErr>((
            base.clone().unbind(),
            [get("family")?, get("type")?, get("proto")?],
        ))
    })
}

/// `descr.__get__(obj)` for a member descriptor of `obj`'s base.
pub(crate) fn raw_get<'py>(
    descr: &Bound<'py, PyAny>,
    obj: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    // SAFETY: `descr` is a live member descriptor, whose type has a
    // `tp_descr_get`; it returns a new reference or NULL with an error set.
    unsafe {
        let get = (*ffi::Py_TYPE(descr.as_ptr()))
            .tp_descr_get
            .ok_or_else(|| pyo3::exceptions::PyTypeError::new_err("not a descriptor"))?;
        Bound::from_owned_ptr_or_err(
            py,
            get(
                descr.as_ptr(),
                obj.as_ptr(),
                ffi::Py_TYPE(obj.as_ptr()).cast::<ffi::PyObject>(),
            ),
        )
    }
}

/// Nagle's algorithm off, as asyncio's socket transports turn it off: on
/// a TCP stream socket of family `AF_INET` or `AF_INET6` (asyncio's own
/// helper for objects that only look like sockets). `fd` is the socket's
/// descriptor, for a plain `socket.socket`.
fn set_nodelay(sock: &Bound<'_, PyAny>, fd: Option<i32>) -> PyResult<()> {
    let py = sock.py();
    let (base, [family, type_, proto]) = raw_socket(py)?;
    // The class itself: a mock that claims `socket` as its `__class__`
    // passes `isinstance`, and gets asyncio's helper instead.
    if !sock.get_type().is_subclass(base.bind(py))? {
        let helper = py
            .import(pyo3::intern!(py, "asyncio.base_events"))?
            .getattr(pyo3::intern!(py, "_set_nodelay"))?;
        return helper.call1((sock,)).map(drop);
    }
    let int = |d: &Py<PyAny>| raw_get(d.bind(py), sock)?.extract::<i32>();
    let tcp = matches!(int(family)?, libc::AF_INET | libc::AF_INET6)
        && int(type_)? == libc::SOCK_STREAM
        && int(proto)? == libc::IPPROTO_TCP;
    if !tcp {
        return Ok(());
    }
    let plain = crate::plain_sock::PlainSocket::get(py)?;
    if let (true, Some(fd)) = (plain.is_exact(py, sock), fd) {
        // What the socket module's `setsockopt` does with an int, less its
        // argument parsing.
        let one: libc::c_int = 1;
        // SAFETY: `one` is a live c_int for the length of the call, and its
        // size is the length given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(crate::errors::io_err(std::io::Error::last_os_error()));
        }
        return Ok(());
    }
    sock.call_method1(
        pyo3::intern!(py, "setsockopt"),
        (libc::IPPROTO_TCP, libc::TCP_NODELAY, 1),
    )
    .map(drop)
}

/// A stream socket transport's `__init__(loop, sock, protocol, waiter,
/// extra, server)`: the extra info, the core (of the class's
/// `_core_class`) in the `_core` slot, `_sock_fd`, the server's count, the
/// `loop._transports` entry, Nagle off, and the core started (which
/// schedules `connection_made`, the reading and the waiter).
#[allow(clippy::too_many_arguments)]
pub fn stream_transport_init(
    transport: &Bound<'_, PyAny>,
    loop_: &Bound<'_, PyAny>,
    sock: &Bound<'_, PyAny>,
    protocol: &Bound<'_, PyAny>,
    waiter: &Bound<'_, PyAny>,
    extra: Option<Bound<'_, PyAny>>,
    server: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = transport.py();
    _init_socket_extra(transport, sock, extra)?;
    // The core: made and started here for the standard classes, whose
    // `_core_class` is known; anything else gets its class called.
    let kind = core_kind(py, transport.get_type().as_any())?;
    let lp = loop_.cast::<LoopCore>().ok();
    fn opt<'a, 'py>(o: &'a Bound<'py, PyAny>) -> Option<&'a Bound<'py, PyAny>> {
        (!o.is_none()).then_some(o)
    }
    let core = match (kind, lp) {
        (Some(CoreKind::Plain), Some(lp)) => Bound::new(
            py,
            StreamCore::py_new(lp, sock, protocol, transport, opt(server))?,
        )?
        .into_any(),
        (Some(CoreKind::Ring), Some(lp)) => Bound::new(
            py,
            RingStreamCore::py_new(lp, sock, protocol, transport, opt(server))?,
        )?
        .into_any(),
        _ => transport
            .getattr(pyo3::intern!(py, "_core_class"))?
            .call1((loop_, sock, protocol, transport, server))?,
    };
    transport.setattr(pyo3::intern!(py, "_core"), &core)?;
    let fd = core.getattr(pyo3::intern!(py, "fd"))?;
    transport.setattr(pyo3::intern!(py, "_sock_fd"), &fd)?;
    if !server.is_none() {
        _server_attach(server)?;
    }
    crate::link::_register_transport(
        &loop_.getattr(pyo3::intern!(py, "_transports"))?,
        &fd,
        transport,
    )?;
    set_nodelay(sock, fd.extract::<i32>().ok().filter(|&n| n >= 0))?;
    if let Ok(c) = core.cast::<StreamCore>() {
        StreamCore::_start(c, opt(waiter))
    } else if let Ok(c) = core.cast::<RingStreamCore>() {
        RingStreamCore::_start(c, opt(waiter))
    } else {
        core.call_method1(pyo3::intern!(py, "_start"), (waiter,))
            .map(drop)
    }
}

/// Which native core a stream transport of `transport`'s class has.
#[derive(Clone, Copy)]
enum CoreKind {
    /// `SocketTransport`'s `StreamCore`.
    Plain,
    /// `RingSocketTransport`'s `RingStreamCore`.
    Ring,
}

/// `ferroloop._transports.SocketTransport` and `RingSocketTransport`.
static STREAM_CLASSES: PyOnceLock<[Pinned; 2]> = PyOnceLock::new();

fn stream_classes(py: Python<'_>) -> PyResult<&[Pinned; 2]> {
    STREAM_CLASSES.get_or_try_init(py, || {
        let module = py.import("ferroloop._transports")?;
        let class = |name: &str, core: Bound<'_, PyType>| -> PyResult<Pinned> {
            let ty = module.getattr(name)?.cast_into::<PyType>()?;
            // The class as the module made it: its own core class, and the
            // C `__init__` installed in it (a lookup also gives the class a
            // valid version tag). Else it is never taken as known.
            let init = ty.getattr("__dict__")?.get_item("__init__").ok();
            let as_made = ty.getattr("_core_class")?.is(&core)
                && init
                    .is_some_and(|i| i.get_type().name().is_ok_and(|n| n == "method_descriptor"));
            let mut pinned = Pinned::new(ty);
            if !as_made {
                pinned.tag = 0;
            }
            Ok(pinned)
        };
        Ok([
            class("SocketTransport", py.get_type::<StreamCore>())?,
            class("RingSocketTransport", py.get_type::<RingStreamCore>())?,
        ])
    })
}

/// The core a stream transport of class `cls` makes, when `cls` is
/// exactly one of the standard stream transport classes, unchanged (its
/// `_core_class` and `__init__` are then the module's).
fn core_kind(py: Python<'_>, cls: &Bound<'_, PyAny>) -> PyResult<Option<CoreKind>> {
    let [plain, ring] = stream_classes(py)?;
    let is = |c: &Pinned| cls.is(c.ty.bind(py)) && c.unchanged(py);
    Ok(if is(plain) {
        Some(CoreKind::Plain)
    } else if is(ring) {
        Some(CoreKind::Ring)
    } else {
        None
    })
}

/// `cls(loop_, sock, protocol, None, extra, server)` for a stream transport
/// class: for the standard classes, unchanged, the object made by the
/// type's `tp_new` and set up by [`stream_transport_init`] (what their
/// `__init__` runs), without the interpreter's call of a Python-level
/// `__init__`; any other class is called.
fn new_stream_transport<'py>(
    cls: &Bound<'py, PyAny>,
    loop_: &Bound<'py, PyAny>,
    sock: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    extra: Bound<'py, PyDict>,
    server: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let ty = match (core_kind(py, cls)?, cls.cast::<PyType>()) {
        (Some(_), Ok(ty)) => ty,
        _ => return cls.call1((loop_, sock, protocol, py.None(), extra, server)),
    };
    let obj = new_instance(py, ty, &PyTuple::empty(py))?;
    let none = py.None().into_bound(py);
    stream_transport_init(
        &obj,
        loop_,
        sock,
        protocol,
        &none,
        Some(extra.into_any()),
        server,
    )?;
    Ok(obj)
}

/// `asyncio.log.logger.debug`.
static DEBUG_LOG: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The listener's readiness (`loop._accept_connection`, the callback
/// asyncio's `_start_serving` registers), without a Python frame for the
/// common case: no TLS, a real socket (by its class, not `isinstance`,
/// which a mock passes) of a family the loop accepts natively. Each
/// connection, as many as `LoopCore::_ff_accept` gives, becomes a
/// `socket.socket` (`_socket_from_fd`), logged in debug mode, then a
/// protocol and a transport (`_accept_into`). Errors end the readiness as
/// asyncio's accept loop ends it: quietly for `BlockingIOError`,
/// `InterruptedError` and `ConnectionAbortedError`; another `OSError`
/// through `loop._ff_accept_failed` (which backs off for running out of
/// descriptors or memory and raises the rest); anything else raised.
/// Other listeners are the Python `loop._ff_accept_general`'s.
#[allow(clippy::too_many_arguments)]
pub fn accept_connection(
    core: &Bound<'_, crate::loop_core::LoopCore>,
    protocol_factory: &Bound<'_, PyAny>,
    sock: &Bound<'_, PyAny>,
    sslcontext: &Bound<'_, PyAny>,
    server: &Bound<'_, PyAny>,
    backlog: &Bound<'_, PyAny>,
    ssl_handshake_timeout: &Bound<'_, PyAny>,
    ssl_shutdown_timeout: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = core.py();
    let loop_ = core.as_any();
    let args = (
        protocol_factory,
        sock,
        sslcontext,
        server,
        backlog,
        ssl_handshake_timeout,
        ssl_shutdown_timeout,
    );
    let debug_log = DEBUG_LOG.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("asyncio.log")?
                .getattr("logger")?
                .getattr("debug")?
                .unbind(),
        )
    })?;
    let (base, [family_d, type_d, proto_d]) = raw_socket(py)?;
    let general = || {
        loop_
            .call_method1(pyo3::intern!(py, "_ff_accept_general"), args)
            .map(drop)
    };
    if !sslcontext.is_none() || !sock.get_type().is_subclass(base.bind(py))? {
        return general();
    }
    let family = raw_get(family_d.bind(py), sock)?;
    let native = family
        .extract::<i32>()
        .is_ok_and(|f| matches!(f, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX));
    // As `range(backlog)`: none for a negative count; an object that is
    // not an int (whose error `range` gives) goes the Python way.
    let Ok(backlog_n) = backlog.extract::<isize>() else {
        return general();
    };
    if !native {
        return general();
    }
    let backlog_n = backlog_n.max(0) as usize;
    let type_ = raw_get(type_d.bind(py), sock)?.extract::<i32>()? | libc::SOCK_NONBLOCK;
    let type_ = type_.into_pyobject(py)?.into_any();
    let proto = raw_get(proto_d.bind(py), sock)?;
    let listener: i32 = sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?;
    let debug = loop_.getattr(pyo3::intern!(py, "_debug"))?.is_truthy()?;
    let stream_class = loop_.getattr(pyo3::intern!(py, "_ff_stream_transport"))?;
    let ended = |e: PyErr| -> PyResult<()> {
        if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
            || e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py)
            || e.is_instance_of::<pyo3::exceptions::PyConnectionAbortedError>(py)
        {
            return Ok(());
        }
        if !e.is_instance_of::<PyOSError>(py) {
            return Err(e);
        }
        // Out of descriptors or memory, or raised (the Python side tells).
        let (a, b, c, d, f, g, h) = args;
        loop_
            .call_method1(
                pyo3::intern!(py, "_ff_accept_failed"),
                (e.value(py), a, b, c, d, f, g, h),
            )
            .map(drop)
    };
    for taken in 0..backlog_n {
        let got = match core.get()._ff_accept(py, listener, taken) {
            Ok(got) => got,
            Err(e) => return ended(e),
        };
        let Some((fd, addr, last)) = got else {
            return Ok(());
        };
        let fd_obj = fd.into_pyobject(py)?.into_any();
        let conn = match _socket_from_fd(py, &family, &type_, &proto, &fd_obj) {
            Ok(c) => c,
            Err(e) => {
                // SAFETY: `fd` is the descriptor just accepted, which no
                // object took.
                unsafe { libc::close(fd) };
                return ended(e);
            }
        };
        let addr = addr.into_bound(py);
        if debug {
            debug_log.bind(py).call1((
                "%r got a new connection from %r: %r",
                server,
                &addr,
                &conn,
            ))?;
        }
        _accept_into(loop_, &stream_class, protocol_factory, &conn, &addr, server)?;
        if last {
            return Ok(());
        }
    }
    Ok(())
}
