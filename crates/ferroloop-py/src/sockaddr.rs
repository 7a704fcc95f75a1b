//! Accepting connections natively, with the peer's address in the shape the
//! socket module gives it.

use std::ffi::CStr;
use std::os::fd::IntoRawFd;

use ferroloop_core::net::{accept_nonblocking, local_address, SockAddr};
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::errors::io_err;

/// `listener._accept()` for a listening socket of family `AF_INET`,
/// `AF_INET6` or `AF_UNIX`, except that the new descriptor is non-blocking
/// from the start (`accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`): `(fd, address)`
/// with the address as the socket module makes it, or `None` where the
/// socket module would raise what ends asyncio's accept loop for the pass
/// without a report: nothing waits (`BlockingIOError`) or the connection
/// was aborted before it was accepted (`ConnectionAbortedError`). Raising
/// those cost more than the accept (the message formatted, the exception
/// caught in Python), once per readiness. A signal's interruption runs the
/// handlers and tries again, as the socket module does; other errors are
/// its `OSError`s.
#[pyfunction]
pub fn _accept_nonblocking(py: Python<'_>, fd: i32) -> PyResult<Option<(i32, Py<PyAny>)>> {
    loop {
        match accept_nonblocking(fd) {
            Ok((conn, addr)) => {
                // The descriptor is closed if the address cannot be made.
                let addr = to_py(py, &addr)?;
                return Ok(Some((conn.into_raw_fd(), addr)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => py.check_signals()?,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(libc::ECONNABORTED) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(io_err(e)),
        }
    }
}

/// `sock.getsockname()`. For exactly a `socket.socket` of family
/// `AF_INET`, `AF_INET6` or `AF_UNIX`, the system call made here and the
/// address made as the socket module makes it ([`to_py`]), without the
/// module's GIL release and its `inet_ntop` (whose `sprintf` alone cost
/// about 2,000 instructions per accepted connection); the method
/// otherwise.
#[pyfunction]
pub fn _sockname(sock: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = sock.py();
    let plain = crate::plain_sock::PlainSocket::get(py)?;
    if plain.is_exact(py, sock) {
        if let Some(fd) = plain.open_fd(py, sock)? {
            match local_address(fd) {
                Ok(addr)
                    if matches!(
                        addr.family(),
                        libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX
                    ) =>
                {
                    return to_py(py, &addr);
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
    }
    Ok(sock
        .call_method0(pyo3::intern!(py, "getsockname"))?
        .unbind())
}

/// The socket module's form of an address: `None` when empty; `(host,
/// port)` for IPv4; `(host, port, flowinfo, scope_id)` for IPv6; for Unix
/// sockets the abstract name as `bytes`, else the path decoded with the
/// file system encoding (`''` for an unnamed peer).
pub(crate) fn to_py(py: Python<'_>, addr: &SockAddr) -> PyResult<Py<PyAny>> {
    if addr.is_empty() {
        return Ok(py.None());
    }
    if let Some(v4) = addr.as_inet() {
        let host = dotted_quad(py, v4.sin_addr.s_addr.to_ne_bytes());
        let port = u16::from_be(v4.sin_port);
        return Ok(
            PyTuple::new(py, [host.into_any(), port.into_pyobject(py)?.into_any()])?
                .into_any()
                .unbind(),
        );
    }
    if let Some(v6) = addr.as_inet6() {
        let host = ntop(
            py,
            libc::AF_INET6,
            (&v6.sin6_addr as *const libc::in6_addr).cast(),
        )?;
        let items = [
            host.into_any(),
            u16::from_be(v6.sin6_port).into_pyobject(py)?.into_any(),
            u32::from_be(v6.sin6_flowinfo).into_pyobject(py)?.into_any(),
            v6.sin6_scope_id.into_pyobject(py)?.into_any(),
        ];
        return Ok(PyTuple::new(py, items)?.into_any().unbind());
    }
    if let Some((un, len)) = addr.as_unix() {
        // SAFETY: `sun_path` is `len` bytes the kernel wrote, within the
        // field; `c_char` and `u8` have the same size.
        let path = unsafe { std::slice::from_raw_parts(un.sun_path.as_ptr().cast::<u8>(), len) };
        if path.first() == Some(&0) {
            return Ok(PyBytes::new(py, path).into_any().unbind());
        }
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        // SAFETY: `path[..end]` is valid for reads; CPython copies it.
        let raw = unsafe {
            ffi::PyUnicode_DecodeFSDefaultAndSize(path.as_ptr().cast(), end as ffi::Py_ssize_t)
        };
        // SAFETY: a new reference, or null with an exception set.
        return Ok(unsafe { Bound::from_owned_ptr_or_err(py, raw)? }.unbind());
    }
    Err(PyValueError::new_err(format!(
        "address family {} is not accepted natively",
        addr.family()
    )))
}

extern "C" {
    // The C library's; the libc crate does not bind it. The socket module
    // formats addresses with it, and `std::net`'s formatting differs for
    // some IPv6 addresses.
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// An IPv4 address (its bytes in network order) as `inet_ntop` writes it,
/// four decimal numbers joined by dots, without its `sprintf`: about 1,500
/// instructions a call, once per accepted connection and datagram.
fn dotted_quad(py: Python<'_>, octets: [u8; 4]) -> Bound<'_, PyString> {
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    // SAFETY: `buf[..n]` is ASCII digits and dots, so valid UTF-8.
    PyString::new(py, unsafe { std::str::from_utf8_unchecked(&buf[..n]) })
}

/// `inet_ntop` of the address at `src` (an `in_addr` or `in6_addr`).
fn ntop<'py>(py: Python<'py>, af: i32, src: *const libc::c_void) -> PyResult<Bound<'py, PyString>> {
    // Room for INET6_ADDRSTRLEN (46) and more.
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: `src` points at an address of family `af`; `buf` holds
    // `buf.len()` bytes, which inet_ntop does not exceed.
    let out = unsafe { inet_ntop(af, src, buf.as_mut_ptr(), buf.len() as libc::socklen_t) };
    if out.is_null() {
        return Err(io_err(std::io::Error::last_os_error()));
    }
    // SAFETY: on success inet_ntop wrote a NUL-terminated string into `buf`.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
    // inet_ntop writes ASCII only.
    Ok(PyString::new(py, text.to_str().unwrap_or_default()))
}
