//! `StreamCore`: the native half of ferroloop's stream socket transports.
//!
//! A stream transport is a Python object of the class
//! `ferroloop._transports.SocketTransport`, which derives from asyncio's
//! transport classes (so `isinstance` checks hold) and keeps a `StreamCore`
//! for its state and its work: reading from the socket straight into
//! `Protocol.data_received` (or `BufferedProtocol.get_buffer` /
//! `buffer_updated`, with no copy), writing with a try-first send and a
//! buffer for the rest, flow control on the high and low water marks, EOF,
//! and the close / abort ordering that ends in exactly one
//! `connection_lost`. The rules, messages and callback order are those of
//! asyncio's `_SelectorSocketTransport`.

use std::io;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyConnectionError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::cell::GilCell;
use crate::errors::io_err;
use crate::link::{
    check_bytes_like, is_buffered_protocol, is_exit, logger, read_bytes, set_future, would_block,
    ByteView, Flow, LinkCell, WriteBuf, LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};
use crate::loop_core::LoopCore;
use crate::selector::sel::{self, SelState, SockTransport};

const READ_FAILED: &str = "Fatal read error on socket transport";
const WRITE_FAILED: &str = "Fatal write error on socket transport";

struct St {
    buffered: bool,
    protocol_connected: bool,
    buf: WriteBuf,
    flow: Flow,
    eof: bool,
    empty_waiter: Option<Py<PyAny>>,
}

/// The state and work of one stream transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct StreamCore {
    link: LinkCell,
    sel: GilCell<SelState>,
    st: GilCell<St>,
}

impl SockTransport for StreamCore {
    fn link(&self) -> &LinkCell {
        &self.link
    }
    fn sel(&self) -> &GilCell<SelState> {
        &self.sel
    }
    fn has_buffered(&self, py: Python<'_>) -> bool {
        !self.st.borrow(py).buf.is_empty()
    }
    fn clear_buffer(&self, py: Python<'_>) {
        self.st.borrow_mut(py).buf.clear();
    }
}

fn send_fd(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice for the duration of the call; send
    // only reads it. MSG_NOSIGNAL turns SIGPIPE into EPIPE.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn recv_fd(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the callers pass a writable region of `len` bytes that stays
    // valid for the call.
    let n = unsafe { libc::recv(fd, ptr.cast(), len, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn shutdown_wr(fd: RawFd) -> PyResult<()> {
    // SAFETY: a plain system call on a descriptor number.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    Ok(())
}

impl StreamCore {
    /// The end of a protocol callback: exits propagate, any other error is
    /// fatal with `message`.
    fn after_callback(
        slf: &Bound<'_, Self>,
        res: PyResult<Bound<'_, PyAny>>,
        message: &str,
    ) -> PyResult<()> {
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_exit(slf.py(), &e) => Err(e),
            Err(e) => sel::fatal_error(slf, e, message),
        }
    }

    fn on_eof(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let link = &slf.get().link;
        if link.debug(py) {
            link.log(py, "debug", "received EOF")?;
        }
        let keep_open = match protocol
            .call_method0(pyo3::intern!(py, "eof_received"))
            .and_then(|r| r.is_truthy())
        {
            Ok(k) => k,
            Err(e) if is_exit(py, &e) => return Err(e),
            Err(e) => {
                let msg = "Fatal error: protocol.eof_received() call failed.";
                return sel::fatal_error(slf, e, msg);
            }
        };
        if keep_open {
            link.remove_watch(py, false)
        } else {
            sel::close(slf)
        }
    }

    fn read_data(slf: &Bound<'_, Self>, fd: RawFd, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let data = match read_bytes(py, |ptr, len| recv_fd(fd, ptr, len)) {
            Ok(d) => d,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return sel::fatal_error(slf, io_err(e), READ_FAILED),
        };
        if data.as_bytes().is_empty() {
            return Self::on_eof(slf, protocol);
        }
        let res = protocol.call_method1(pyo3::intern!(py, "data_received"), (data,));
        Self::after_callback(
            slf,
            res,
            "Fatal error: protocol.data_received() call failed.",
        )
    }

    fn read_buffered(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        const GET_BUFFER_FAILED: &str = "Fatal error: protocol.get_buffer() call failed.";
        let buf = match protocol.call_method1(pyo3::intern!(py, "get_buffer"), (-1,)) {
            Ok(b) => b,
            Err(e) if is_exit(py, &e) => return Err(e),
            Err(e) => return sel::fatal_error(slf, e, GET_BUFFER_FAILED),
        };
        match buf.len() {
            Ok(0) => {
                let e = PyRuntimeError::new_err("get_buffer() returned an empty buffer");
                return sel::fatal_error(slf, e, GET_BUFFER_FAILED);
            }
            Ok(_) => {}
            Err(e) => return sel::fatal_error(slf, e, GET_BUFFER_FAILED),
        }
        // Outer error: the object gave no writable buffer; inner: recv's.
        let got = ByteView::new(&buf, true).map(|mut v| {
            let (ptr, len) = v.as_mut_ptr();
            recv_fd(fd, ptr, len)
        });
        drop(buf);
        let n = match got {
            Ok(Ok(n)) => n,
            Ok(Err(e)) if would_block(&e) => return Ok(()),
            Ok(Err(e)) => return sel::fatal_error(slf, io_err(e), READ_FAILED),
            Err(e) if is_exit(py, &e) => return Err(e),
            Err(e) => return sel::fatal_error(slf, e, READ_FAILED),
        };
        if n == 0 {
            return Self::on_eof(slf, protocol);
        }
        let res = protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (n,));
        Self::after_callback(
            slf,
            res,
            "Fatal error: protocol.buffer_updated() call failed.",
        )
    }

    fn maybe_pause_protocol(&self, py: Python<'_>) -> PyResult<()> {
        let pause = {
            let mut st = self.st.borrow_mut(py);
            let size = st.buf.len();
            st.flow.should_pause(size)
        };
        if pause {
            self.link.flow_callback(py, "pause_writing")?;
        }
        Ok(())
    }

    fn maybe_resume_protocol(&self, py: Python<'_>) -> PyResult<()> {
        let resume = {
            let mut st = self.st.borrow_mut(py);
            let size = st.buf.len();
            st.flow.should_resume(size)
        };
        if resume {
            self.link.flow_callback(py, "resume_writing")?;
        }
        Ok(())
    }

    fn empty_waiter_ref(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .borrow(py)
            .empty_waiter
            .as_ref()
            .map(|w| w.clone_ref(py))
    }
}

#[pymethods]
impl StreamCore {
    #[new]
    #[pyo3(signature = (lp, sock, protocol, transport, server = None))]
    fn py_new(
        lp: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
        server: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        let buffered = is_buffered_protocol(protocol)?;
        Ok(StreamCore {
            link: LinkCell::new(fd, lp, protocol, transport),
            sel: GilCell::new(SelState::new(sock, server)),
            st: GilCell::new(St {
                buffered,
                protocol_connected: true,
                buf: WriteBuf::default(),
                flow: Flow::default(),
                eof: false,
                empty_waiter: None,
            }),
        })
    }

    /// Schedule `connection_made`, the start of reading and the waiter, in
    /// that order, as asyncio's transport constructor does.
    #[pyo3(signature = (waiter = None))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let start = slf.getattr(pyo3::intern!(slf.py(), "_add_reader_cb"))?;
        slf.get().link.start(slf.py(), Some(start), waiter)
    }

    /// `_add_reader(fd, _read_ready)`: start reading unless paused or
    /// closing by now.
    fn _add_reader_cb(slf: &Bound<'_, Self>) -> PyResult<()> {
        sel::start_reading(slf)
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if me.sel.borrow(py).conn_lost > 0 {
            return Ok(());
        }
        let buffered = me.st.borrow(py).buffered;
        let Some(protocol) = me.link.protocol(py) else {
            return Ok(());
        };
        let protocol = protocol.into_bound(py);
        let fd = me.link.fd(py);
        if buffered {
            Self::read_buffered(slf, fd, &protocol)
        } else {
            Self::read_data(slf, fd, &protocol)
        }
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        check_bytes_like(data)?;
        let (conn_lost, buffered_now) = {
            let st = me.st.borrow(py);
            if st.eof {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
            if st.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err(
                    "unable to write; sendfile is in progress",
                ));
            }
            (me.sel.borrow(py).conn_lost, !st.buf.is_empty())
        };
        let view;
        let bytes: &[u8] = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes(),
            Err(_) => {
                view = ByteView::new(data, false)?;
                view.as_slice()
            }
        };
        if bytes.is_empty() {
            return Ok(());
        }
        if conn_lost > 0 {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                logger(py)?.call_method1("warning", ("socket.send() raised exception.",))?;
            }
            me.sel.borrow_mut(py).conn_lost += 1;
            return Ok(());
        }
        let mut rest = bytes;
        if !buffered_now {
            match send_fd(me.link.fd(py), bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => rest = &bytes[n..],
                Err(e) if would_block(&e) => {}
                Err(e) => return sel::fatal_error(slf, io_err(e), WRITE_FAILED),
            }
            me.link
                .add_watch(slf.as_any(), pyo3::intern!(py, "_write_ready"), true)?;
        }
        me.st.borrow_mut(py).buf.push(rest);
        me.maybe_pause_protocol(py)
    }

    /// `writelines`: the buffers joined, then one `write`.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let joined = PyBytes::new(slf.py(), b"").call_method1("join", (list_of_data,))?;
        Self::write(slf, &joined)
    }

    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let fd = me.link.fd(py);
        let res = {
            let st = me.st.borrow(py);
            if st.buf.is_empty() || me.sel.borrow(py).conn_lost > 0 {
                return Ok(());
            }
            send_fd(fd, st.buf.pending())
        };
        let n = match res {
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => {
                me.link.remove_watch(py, true)?;
                me.st.borrow_mut(py).buf.clear();
                let err = io_err(e);
                let exc = err.value(py).clone().into_any();
                sel::fatal_error(slf, err, WRITE_FAILED)?;
                if let Some(w) = me.empty_waiter_ref(py) {
                    set_future(py, &w, Some(&exc))?;
                }
                return Ok(());
            }
        };
        me.st.borrow_mut(py).buf.consume(n);
        me.maybe_resume_protocol(py)?; // may write more
        let (empty, closing, eof) = {
            let st = me.st.borrow(py);
            (st.buf.is_empty(), me.sel.borrow(py).closing, st.eof)
        };
        if !empty {
            return Ok(());
        }
        me.link.remove_watch(py, true)?;
        if let Some(w) = me.empty_waiter_ref(py) {
            set_future(py, &w, None)?;
        }
        if closing {
            Self::_call_connection_lost(slf, py.None().into_bound(py))
        } else if eof {
            shutdown_wr(fd)
        } else {
            Ok(())
        }
    }

    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        let flush_now = {
            let mut st = self.st.borrow_mut(py);
            if self.sel.borrow(py).closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            st.buf.is_empty()
        };
        if flush_now {
            shutdown_wr(self.link.fd(py))?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        sel::close(slf)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        sel::force_close(slf, None)
    }

    #[pyo3(signature = (exc, message = "Fatal error on transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        sel::fatal_error(slf, PyErr::from_value(exc.clone()), message)
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        sel::force_close(slf, (!exc.is_none()).then(|| exc.clone()))
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let connected = me.st.borrow(py).protocol_connected;
        sel::connection_lost(me, py, &exc, connected)?;
        if let Some(w) = me.empty_waiter_ref(py) {
            let err = PyConnectionError::new_err("Connection is closed by peer");
            set_future(py, &w, Some(err.value(py).as_any()))?;
        }
        Ok(())
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.sel.borrow(py).closing
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        sel::is_reading(self, py)
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        sel::pause_reading(self, py)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        sel::resume_reading(slf)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.st.borrow(py).buf.len()
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (i64, i64) {
        let st = self.st.borrow(py);
        (st.flow.low, st.flow.high)
    }

    #[pyo3(signature = (high = None, low = None))]
    fn set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        crate::link::set_limits(&mut self.st.borrow_mut(py).flow, high, low)?;
        self.maybe_pause_protocol(py)
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let buffered = is_buffered_protocol(protocol)?;
        {
            let mut st = self.st.borrow_mut(py);
            st.buffered = buffered;
            st.protocol_connected = true;
        }
        self.link.set_protocol(protocol);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.link.protocol_obj(py)
    }

    fn _make_empty_waiter(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.st.borrow(py).empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let Some(lp) = self.link.lp(py) else {
            return Err(PyRuntimeError::new_err("the transport is closed"));
        };
        let fut = LoopCore::create_future(&lp)?;
        let done = {
            let mut st = self.st.borrow_mut(py);
            st.empty_waiter = Some(fut.clone_ref(py));
            st.buf.is_empty()
        };
        if done {
            set_future(py, &fut, None)?;
        }
        Ok(fut)
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) {
        let old = self.st.borrow_mut(py).empty_waiter.take();
        drop(old);
    }

    // Read-only state for the Python half (repr, asyncio's internal users).

    #[getter]
    fn fd(&self, py: Python<'_>) -> RawFd {
        self.link.fd(py)
    }

    #[getter]
    fn sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sel.borrow(py).sock.as_ref().map(|s| s.clone_ref(py))
    }

    #[getter(r#loop)]
    fn loop_obj(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.link.lp(py).map(|l| l.into_any().unbind())
    }

    #[getter]
    fn server(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sel.borrow(py).server.as_ref().map(|s| s.clone_ref(py))
    }

    #[getter]
    fn conn_lost(&self, py: Python<'_>) -> u32 {
        self.sel.borrow(py).conn_lost
    }

    #[getter]
    fn paused(&self, py: Python<'_>) -> bool {
        self.sel.borrow(py).paused
    }

    #[getter]
    fn eof(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).eof
    }

    #[getter]
    fn protocol_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).flow.paused
    }

    #[getter]
    fn empty_waiter(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.empty_waiter_ref(py)
    }

    /// Close the socket without telling the protocol (the `__del__` path).
    fn _close_sock(&self, py: Python<'_>) -> PyResult<()> {
        sel::close_sock(self, py)
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.link.traverse(&visit)?;
        sel::traverse(&self.sel, &visit)?;
        if let Some(st) = self.st.gc_borrow() {
            visit.call(&st.empty_waiter)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.link.clear();
        sel::clear(&self.sel);
        let taken = self.st.gc_borrow_mut().map(|mut st| st.empty_waiter.take());
        drop(taken);
    }
}
