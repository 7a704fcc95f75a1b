//! A plain `socket.socket` in non-blocking mode, called natively.
//!
//! For the exact `socket.socket` type (its type unchanged since it was
//! looked at), with an open descriptor and a timeout of 0.0, `recv`,
//! `recv_into` and `send` are made here with the system call itself. That
//! is what the socket module's methods do in that mode, less two costs
//! that dominate a call which cannot block: releasing and retaking the GIL
//! around it, and, when nothing is there yet, a `BlockingIOError` built
//! with its message (`strerror` and a locale decoding, some 4,000
//! instructions) only to be caught. Every other case (a size that is not
//! an `int` or is negative, an argument that is not a buffer, a socket
//! with a timeout, a closed one) is given to the method, which returns or
//! raises what the socket module does.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyInt, PyType};

use crate::errors::io_err;
use crate::link::{bytes_from, queued, UninitBytes, BIG_READ, MAX_READ, SCRATCH};
use crate::sock_ops::Op;

static PLAIN_SOCKET: PyOnceLock<PlainSocket> = PyOnceLock::new();

/// `socket.socket`, the methods of `_socket.socket` it inherits (in
/// [`Op`] order, then `fileno` and `gettimeout`), and the type's version
/// tag when they were looked up.
pub(crate) struct PlainSocket {
    ty: Py<PyType>,
    methods: [Py<PyAny>; 3],
    fileno: Py<PyAny>,
    gettimeout: Py<PyAny>,
    /// `_socket.socket.close`, what `socket.socket._real_close` calls.
    real_close: Py<PyAny>,
    tag: u32,
}

/// What a native call did.
pub(crate) enum Native<'py> {
    /// `recv`'s bytes.
    Read(Bound<'py, PyAny>),
    /// `recv_into`'s or `send`'s count.
    Count(usize),
    /// Nothing yet (`EAGAIN`): the socket module would raise
    /// `BlockingIOError`.
    WouldBlock,
    /// Not a case for the native call: call the method.
    Method,
}

impl PlainSocket {
    pub(crate) fn get(py: Python<'_>) -> PyResult<&PlainSocket> {
        PLAIN_SOCKET.get_or_try_init(py, || {
            let ty = py
                .import("socket")?
                .getattr("socket")?
                .cast_into::<PyType>()?;
            // Looked up on `socket.socket` itself, which also gives the
            // type a valid version tag.
            let [a, b, c] = Op::ALL.map(|op| ty.getattr(op.method(py)));
            let methods = [a?.unbind(), b?.unbind(), c?.unbind()];
            let fileno = ty.getattr("fileno")?.unbind();
            let gettimeout = ty.getattr("gettimeout")?.unbind();
            let real_close = py
                .import("_socket")?
                .getattr("socket")?
                .getattr("close")?
                .unbind();
            let tag = Self::tag_of(&ty);
            Ok(PlainSocket {
                ty: ty.unbind(),
                methods,
                fileno,
                gettimeout,
                real_close,
                tag,
            })
        })
    }

    pub(crate) fn ty<'py>(&self, py: Python<'py>) -> &Bound<'py, PyType> {
        self.ty.bind(py)
    }

    fn tag_of(ty: &Bound<'_, PyType>) -> u32 {
        // SAFETY: `ty` is a live type object; its version tag is a plain
        // field read under the GIL.
        unsafe { (*ty.as_type_ptr()).tp_version_tag }
    }

    /// True when `sock` is exactly a `socket.socket` and neither it nor a
    /// base changed since the methods were looked up (a changed type gets
    /// a new version tag, or none).
    pub(crate) fn is_exact(&self, py: Python<'_>, sock: &Bound<'_, PyAny>) -> bool {
        let ty = self.ty.bind(py);
        sock.get_type().is(ty) && self.tag != 0 && Self::tag_of(ty) == self.tag
    }

    /// `sock.<method>(arg)` for `op`, the method called as found on the
    /// type (for a socket [`Self::is_exact`] accepted).
    pub(crate) fn call_method<'py>(
        &self,
        py: Python<'py>,
        op: Op,
        sock: &Bound<'py, PyAny>,
        arg: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        call(py, &self.methods[op as usize], &[sock, arg])
    }

    /// The descriptor of `sock` (a socket [`Self::is_exact`] accepted) when
    /// it is open; None once it is closed.
    pub(crate) fn open_fd(
        &self,
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
    ) -> PyResult<Option<RawFd>> {
        let fd = call(py, &self.fileno, &[sock])?;
        Ok(fd
            .cast::<PyInt>()
            .ok()
            .and_then(|n| n.extract::<RawFd>().ok())
            .filter(|&fd| fd >= 0))
    }

    /// The descriptor of `sock` when it is open and non-blocking
    /// (`gettimeout()` is 0.0); None otherwise.
    fn nonblocking_fd(&self, py: Python<'_>, sock: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
        let Some(fd) = self.open_fd(py, sock)? else {
            return Ok(None);
        };
        let timeout = call(py, &self.gettimeout, &[sock])?;
        let nonblocking = timeout.cast::<PyFloat>().is_ok_and(|t| t.value() == 0.0);
        Ok(nonblocking.then_some(fd))
    }

    /// `sock.recv(n)`.
    pub(crate) fn recv<'py>(
        &self,
        py: Python<'py>,
        sock: &Bound<'py, PyAny>,
        n: &Bound<'py, PyAny>,
    ) -> PyResult<Native<'py>> {
        let Some(n) = exact_size(n) else {
            return Ok(Native::Method);
        };
        let Some(fd) = self.nonblocking_fd(py, sock)? else {
            return Ok(Native::Method);
        };
        // After a large read, a `bytes` of what is queued, if less than
        // asked, so that asyncio's usual 256 KiB is not allocated (often by
        // `mmap`) for each read. Else, and when nothing is queued (no data
        // yet, the end of the stream, or an error to take), the scratch
        // buffer.
        let cap = match RECV_BIG.with(Cell::get).then(|| queued(fd)).flatten() {
            Some(q) if q > 0 => n.min(q),
            _ => {
                if n <= MAX_READ {
                    if let Some(read) = recv_small(py, fd, n) {
                        return read;
                    }
                }
                n
            }
        };
        // A size too large to allocate raises MemoryError, as the module's.
        let mut buf = UninitBytes::try_new(py, cap)?;
        let ptr = buf.as_mut_ptr();
        // SAFETY: `ptr` holds `cap` writable bytes, owned by `buf`.
        match retry(py, || unsafe { libc::recv(fd, ptr.cast(), cap, 0) })? {
            Some(got) => {
                RECV_BIG.with(|b| b.set(got >= BIG_READ));
                Ok(Native::Read(
                    buf.finish(py, got).map_err(io_err)?.into_any(),
                ))
            }
            None => Ok(Native::WouldBlock),
        }
    }

    /// `sock.recv_into(buf)`.
    pub(crate) fn recv_into<'py>(
        &self,
        py: Python<'py>,
        sock: &Bound<'py, PyAny>,
        buf: &Bound<'py, PyAny>,
    ) -> PyResult<Native<'py>> {
        let Some(fd) = self.nonblocking_fd(py, sock)? else {
            return Ok(Native::Method);
        };
        let Some(view) = Buffer::get(buf, ffi::PyBUF_WRITABLE) else {
            return Ok(Native::Method);
        };
        let (ptr, len) = (view.0.buf, view.0.len as usize);
        // SAFETY: the buffer is writable and `len` bytes long, and held
        // until `view` is dropped, after the call.
        let got = retry(py, || unsafe { libc::recv(fd, ptr, len, 0) })?;
        Ok(got.map_or(Native::WouldBlock, Native::Count))
    }

    /// `sock.send(data[offset:])`, for `offset` within `data`.
    pub(crate) fn send<'py>(
        &self,
        py: Python<'py>,
        sock: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
        offset: usize,
    ) -> PyResult<Native<'py>> {
        let Some(fd) = self.nonblocking_fd(py, sock)? else {
            return Ok(Native::Method);
        };
        let Some(view) = Buffer::get(data, ffi::PyBUF_SIMPLE) else {
            return Ok(Native::Method);
        };
        let len = view.0.len as usize;
        // Bytes only: asyncio counts what went out against `len(data)`,
        // which is in items.
        if view.0.itemsize != 1 || offset > len {
            return Ok(Native::Method);
        }
        // SAFETY: `offset` <= `len`, so the pointer stays inside (or just
        // past the end of) the buffer.
        let ptr = unsafe { view.0.buf.cast::<u8>().add(offset) };
        // SAFETY: `len - offset` readable bytes start at `ptr`, held until
        // `view` is dropped, after the call.
        let sent = retry(py, || unsafe {
            libc::send(fd, ptr.cast(), len - offset, 0)
        })?;
        Ok(sent.map_or(Native::WouldBlock, Native::Count))
    }
}

/// `sock.close()`. For exactly a `socket.socket` whose type is unchanged,
/// what its Python `close` does, without its two frames: mark it closed,
/// and close the descriptor unless `makefile()` objects still use it. Any
/// other object's own `close` is called.
pub(crate) fn close(py: Python<'_>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let plain = PlainSocket::get(py)?;
    if plain.is_exact(py, sock) {
        sock.setattr(pyo3::intern!(py, "_closed"), true)?;
        match makefile_users(sock) {
            Some(true) => return Ok(()),
            Some(false) => return call(py, &plain.real_close, &[sock]).map(drop),
            // Not a plain int: let the method compare it (and raise as it
            // would).
            None => {}
        }
    }
    sock.call_method0(pyo3::intern!(py, "close")).map(drop)
}

/// Whether `makefile()` objects still use `sock`'s descriptor (its
/// `_io_refs` is above zero, which makes `socket.close()` leave the
/// descriptor open); None when `_io_refs` is missing, not an `int`, or
/// out of range.
pub(crate) fn makefile_users(sock: &Bound<'_, PyAny>) -> Option<bool> {
    let n = sock.getattr(pyo3::intern!(sock.py(), "_io_refs")).ok()?;
    if !n.is_exact_instance_of::<PyInt>() {
        return None;
    }
    n.extract::<i64>().ok().map(|n| n > 0)
}

/// True when `sock`'s type is `socket.socket` itself (not a subclass or a
/// stand-in, whose methods may differ).
pub(crate) fn is_plain_socket(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = sock.py();
    Ok(sock.get_type().is(PlainSocket::get(py)?.ty(py)))
}

/// `f(*args)` by vectorcall.
fn call<'py>(
    py: Python<'py>,
    f: &Py<PyAny>,
    args: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    let argv: [*mut ffi::PyObject; 2] = [
        args[0].as_ptr(),
        args.get(1).map_or(std::ptr::null_mut(), |a| a.as_ptr()),
    ];
    // SAFETY: `f` is a live callable and the first `args.len()` (one or
    // two) pointers of `argv` live objects for the duration of the call;
    // the result is a new reference or NULL with an error set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyObject_Vectorcall(f.as_ptr(), argv.as_ptr(), args.len(), std::ptr::null_mut()),
        )
    }
}

/// An exact, non-negative `int` size; None for anything the method must
/// judge (it raises the socket module's errors).
fn exact_size(n: &Bound<'_, PyAny>) -> Option<usize> {
    if !n.is_exact_instance_of::<PyInt>() {
        return None;
    }
    // Zero too: the module's `recv(0)` makes the call, and a `bytes` of
    // size zero is CPython's shared empty one, which is not written into.
    // Above `isize::MAX` the module raises OverflowError.
    n.extract::<usize>()
        .ok()
        .filter(|&n| n > 0 && n <= isize::MAX as usize)
}

thread_local! {
    /// The last `recv` of a plain socket on this thread brought
    /// [`BIG_READ`] bytes or more. Until one brings less, reads go
    /// straight into a `bytes` sized by what is queued (a copy of a large
    /// message would cost more than the system call that asks); the others
    /// go into the thread's scratch buffer, copied into a `bytes` of the
    /// size that came.
    static RECV_BIG: Cell<bool> = const { Cell::new(false) };
}

/// `recv(fd, n)` into the thread's scratch buffer (`n` at most its size),
/// what came copied into a `bytes`: no allocation of the size asked, which
/// for asyncio's usual 256 KiB is above glibc's `mmap` threshold, so that
/// many calls made an `mmap`, an `mremap` to shrink it and a `munmap`.
/// None when the buffer is in use.
fn recv_small<'py>(py: Python<'py>, fd: RawFd, n: usize) -> Option<PyResult<Native<'py>>> {
    loop {
        // The buffer is borrowed only around the system call and the copy:
        // the signal handlers run below may read on this thread too.
        let r = SCRATCH.with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            let buf = s.get_mut(..n)?;
            // SAFETY: `buf` is `n` writable bytes, borrowed for the call.
            let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), n, 0) };
            Some(if r >= 0 {
                Ok(bytes_from(py, &buf[..r as usize]))
            } else {
                Err(io::Error::last_os_error())
            })
        })?;
        let e = match r {
            Ok(b) => {
                RECV_BIG.with(|big| big.set(b.as_bytes().len() >= BIG_READ));
                return Some(Ok(Native::Read(b.into_any())));
            }
            Err(e) => e,
        };
        match interrupted(py, e) {
            Ok(true) => {}
            Ok(false) => return Some(Ok(Native::WouldBlock)),
            Err(e) => return Some(Err(e)),
        }
    }
}

/// A system call on a non-blocking socket, as the socket module makes it:
/// `EINTR` runs the signal handlers (whose exception wins) and tries again;
/// `EAGAIN` is None; another error is the `OSError` the module raises.
fn retry(py: Python<'_>, mut f: impl FnMut() -> isize) -> PyResult<Option<usize>> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(Some(r as usize));
        }
        if !interrupted(py, io::Error::last_os_error())? {
            return Ok(None);
        }
    }
}

/// What the error of a call on a non-blocking socket means, as the socket
/// module reads it: true for `EINTR` (to try again, once the signal
/// handlers ran; an exception one raised wins), false for `EAGAIN`, and
/// any other error as the `OSError` the module raises.
fn interrupted(py: Python<'_>, e: io::Error) -> PyResult<bool> {
    match e.raw_os_error() {
        Some(libc::EINTR) => {
            // SAFETY: we hold the GIL; -1 means a handler raised, and the
            // exception is set.
            if unsafe { ffi::PyErr_CheckSignals() } != 0 {
                return Err(PyErr::fetch(py));
            }
            Ok(true)
        }
        Some(libc::EAGAIN) => Ok(false),
        _ => Err(io_err(e)),
    }
}

/// A buffer view of an object, released when dropped.
struct Buffer(ffi::Py_buffer);

impl Buffer {
    /// The object's contiguous buffer with `flags`; None (no error left
    /// set) when it has none of that kind.
    fn get(obj: &Bound<'_, PyAny>, flags: std::os::raw::c_int) -> Option<Buffer> {
        // SAFETY: an all-zero Py_buffer is a valid "empty" value for
        // PyObject_GetBuffer to fill in.
        let mut view: ffi::Py_buffer = unsafe { std::mem::zeroed() };
        // SAFETY: `obj` is a live object and `view` writable; on failure
        // nothing is held and the error is cleared (the method, called
        // instead, raises its own).
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut view, flags) } != 0 {
            // SAFETY: we hold the GIL.
            unsafe { ffi::PyErr_Clear() };
            return None;
        }
        Some(Buffer(view))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer
        // and is released once; Buffer is only made and dropped with the
        // GIL held (inside the calls above).
        unsafe { ffi::PyBuffer_Release(&mut self.0) };
    }
}
