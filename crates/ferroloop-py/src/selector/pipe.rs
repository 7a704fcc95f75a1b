//! `ReadPipeCore` and `WritePipeCore`: the native halves of ferroloop's
//! pipe transports (`connect_read_pipe`, `connect_write_pipe`, and the pipes
//! of subprocesses).
//!
//! The Python classes in `ferroloop._transports` derive from asyncio's
//! transport classes and keep one of these for their state and their work.
//! The rules, messages and callback order are those of asyncio's
//! `_UnixReadPipeTransport` and `_UnixWritePipeTransport`, which differ from
//! the socket transport's in several places (errors from `data_received`
//! are not caught; EOF schedules `eof_received` and `connection_lost`; a
//! write pipe watches its descriptor for reading to learn that the reader
//! went away; `write_eof` closes the pipe). The write buffer and the water
//! marks are the shared ones from `link.rs`.

use std::os::fd::RawFd;
use std::sync::atomic::AtomicBool;

use pyo3::exceptions::{PyAssertionError, PyBrokenPipeError, PyOSError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::cell::GilCell;
use crate::errors::io_err;
use crate::link::{
    check_bytes_like, close_object, logger, read_bytes, read_fd, would_block, write_fd, ByteView,
    Flow, LinkCell, WriteBuf, LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};
use crate::loop_core::LoopCore;

/// asyncio's `except OSError` for pipes: EIO (a pty whose other side
/// closed) is only logged in debug mode; other errors are reported.
fn report_pipe_error(
    link: &LinkCell,
    py: Python<'_>,
    exc: &Bound<'_, PyAny>,
    message: &str,
    quiet: bool,
) -> PyResult<()> {
    if quiet {
        if link.debug(py) {
            link.log_error(py, message, exc)?;
        }
        Ok(())
    } else {
        link.report(py, message, exc)
    }
}

struct ReadSt {
    pipe: Option<Py<PyAny>>,
    closing: bool,
    paused: bool,
}

/// The read end of a pipe (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct ReadPipeCore {
    link: LinkCell,
    st: GilCell<ReadSt>,
    /// The last read was large (`link::read_bytes`).
    big_reads: AtomicBool,
}

impl ReadPipeCore {
    fn is_reading_now(&self, py: Python<'_>) -> bool {
        let st = self.st.borrow(py);
        !st.closing && !st.paused
    }

    fn close_with(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        me.st.borrow_mut(py).closing = true;
        me.link.remove_watch(py, false)?;
        me.link.schedule_connection_lost(slf.as_any(), exc)
    }

    fn fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let py = slf.py();
        let eio = exc.is_instance_of::<PyOSError>()
            && exc
                .getattr("errno")
                .and_then(|e| e.extract::<i32>())
                .is_ok_and(|e| e == libc::EIO);
        report_pipe_error(&slf.get().link, py, &exc, message, eio)?;
        Self::close_with(slf, exc)
    }
}

#[pymethods]
impl ReadPipeCore {
    #[new]
    fn py_new(
        lp: &Bound<'_, LoopCore>,
        pipe: &Bound<'_, PyAny>,
        fd: RawFd,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
    ) -> Self {
        ReadPipeCore {
            link: LinkCell::new(fd, lp, protocol, transport),
            st: GilCell::new(ReadSt {
                pipe: Some(pipe.clone().unbind()),
                closing: false,
                paused: false,
            }),
            big_reads: AtomicBool::new(false),
        }
    }

    #[pyo3(signature = (waiter = None))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let start = slf.getattr(pyo3::intern!(py, "_add_reader_cb"))?;
        slf.get().link.start(py, Some(start), waiter)
    }

    /// `_add_reader(fd, _read_ready)`: start reading unless paused or
    /// closing by now.
    fn _add_reader_cb(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().is_reading_now(py) {
            return Ok(());
        }
        slf.get()
            .link
            .add_watch(slf.as_any(), pyo3::intern!(py, "_read_ready"), false)
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let fd = me.link.fd(py);
        let data = match read_bytes(py, fd, &me.big_reads, read_fd) {
            Ok(d) => d,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => {
                let exc = io_err(e).into_value(py).into_bound(py).into_any();
                return Self::fatal_error(slf, exc, "Fatal read error on pipe transport");
            }
        };
        if !data.as_bytes().is_empty() {
            // Unlike the socket transport's, errors here reach the loop's
            // exception handler through the callback, as in asyncio.
            if let Some(p) = me.link.protocol(py) {
                p.bind(py)
                    .call_method1(pyo3::intern!(py, "data_received"), (data,))?;
            }
            return Ok(());
        }
        if me.link.debug(py) {
            me.link.log(py, "info", "was closed by peer")?;
        }
        me.st.borrow_mut(py).closing = true;
        me.link.remove_watch(py, false)?;
        let eof = me
            .link
            .protocol_obj(py)
            .into_bound(py)
            .getattr(pyo3::intern!(py, "eof_received"))?;
        me.link.call_soon(py, eof, PyTuple::empty(py))?;
        me.link
            .schedule_connection_lost(slf.as_any(), py.None().into_bound(py))
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.is_reading_now(py)
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        if !self.is_reading_now(py) {
            return Ok(());
        }
        self.st.borrow_mut(py).paused = true;
        self.link.remove_watch(py, false)?;
        if self.link.debug(py) {
            self.link.log(py, "debug", "pauses reading")?;
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        {
            let mut st = me.st.borrow_mut(py);
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
        }
        me.link
            .add_watch(slf.as_any(), pyo3::intern!(py, "_read_ready"), false)?;
        if me.link.debug(py) {
            me.link.log(py, "debug", "resumes reading")?;
        }
        Ok(())
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        self.link.set_protocol(protocol);
    }

    fn get_protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.link.protocol_obj(py)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closing
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().st.borrow(slf.py()).closing {
            return Ok(());
        }
        Self::close_with(slf, slf.py().None().into_bound(slf.py()))
    }

    #[pyo3(signature = (exc, message = "Fatal error on pipe transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, exc, message)
    }

    fn _close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::close_with(slf, exc)
    }

    fn _call_connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        self.link
            .connection_lost(py, &exc, true, || self.st.borrow_mut(py).pipe.take())
    }

    #[getter]
    fn fd(&self, py: Python<'_>) -> RawFd {
        self.link.fd(py)
    }

    #[getter]
    fn pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).pipe.as_ref().map(|p| p.clone_ref(py))
    }

    /// `transport._pipe = ...`, which tests do to silence the finalizer.
    #[setter]
    fn set_pipe(&self, py: Python<'_>, value: Option<Py<PyAny>>) {
        let old = std::mem::replace(&mut self.st.borrow_mut(py).pipe, value);
        drop(old);
    }

    #[getter(r#loop)]
    fn loop_obj(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.link.lp(py).map(|l| l.into_any().unbind())
    }

    #[getter]
    fn paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).paused
    }

    /// Close the pipe without telling the protocol (the `__del__` path).
    fn _close_pipe(&self, py: Python<'_>) -> PyResult<()> {
        let pipe = self.st.borrow_mut(py).pipe.take();
        close_object(py, pipe)
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.link.traverse(&visit)?;
        if let Some(st) = self.st.gc_borrow() {
            visit.call(&st.pipe)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.link.clear();
        let taken = self.st.gc_borrow_mut().map(|mut st| st.pipe.take());
        drop(taken);
    }
}

struct WriteSt {
    pipe: Option<Py<PyAny>>,
    buf: WriteBuf,
    flow: Flow,
    conn_lost: u32,
    /// Set by `close()` or `write_eof()`.
    closing: bool,
}

/// The write end of a pipe (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct WritePipeCore {
    link: LinkCell,
    st: GilCell<WriteSt>,
}

const PIPE_WRITE_FAILED: &str = "Fatal write error on pipe transport";

impl WritePipeCore {
    fn close_with(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let had_buf = {
            let mut st = me.st.borrow_mut(py);
            st.closing = true;
            let had = !st.buf.is_empty();
            st.buf.clear();
            had
        };
        if had_buf {
            me.link.remove_watch(py, true)?;
        }
        me.link.remove_watch(py, false)?;
        me.link.schedule_connection_lost(slf.as_any(), exc)
    }

    fn fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let quiet = exc.is_instance_of::<PyOSError>();
        report_pipe_error(&slf.get().link, slf.py(), &exc, message, quiet)?;
        Self::close_with(slf, exc)
    }

    fn write_failed(slf: &Bound<'_, Self>, err: std::io::Error) -> PyResult<()> {
        let py = slf.py();
        slf.get().st.borrow_mut(py).conn_lost += 1;
        let exc = io_err(err).into_value(py).into_bound(py).into_any();
        Self::fatal_error(slf, exc, PIPE_WRITE_FAILED)
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
}

#[pymethods]
impl WritePipeCore {
    #[new]
    fn py_new(
        lp: &Bound<'_, LoopCore>,
        pipe: &Bound<'_, PyAny>,
        fd: RawFd,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
    ) -> Self {
        WritePipeCore {
            link: LinkCell::new(fd, lp, protocol, transport),
            st: GilCell::new(WriteSt {
                pipe: Some(pipe.clone().unbind()),
                buf: WriteBuf::default(),
                flow: Flow::default(),
                conn_lost: 0,
                closing: false,
            }),
        }
    }

    /// Schedule `connection_made`, then (for pipes and sockets, whose read
    /// readiness means the reader went away) the watch of the descriptor,
    /// then the waiter.
    #[pyo3(signature = (waiter = None, watch_peer = true))]
    fn _start(
        slf: &Bound<'_, Self>,
        waiter: Option<&Bound<'_, PyAny>>,
        watch_peer: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let watch = if watch_peer {
            Some(slf.getattr(pyo3::intern!(py, "_add_reader_cb"))?)
        } else {
            None
        };
        slf.get().link.start(py, watch, waiter)
    }

    fn _add_reader_cb(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get()
            .link
            .add_watch(slf.as_any(), pyo3::intern!(slf.py(), "_read_ready"), false)
    }

    /// The reader closed its end.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if me.link.debug(py) {
            me.link.log(py, "info", "was closed by peer")?;
        }
        let exc = if me.st.borrow(py).buf.is_empty() {
            py.None().into_bound(py)
        } else {
            PyBrokenPipeError::new_err(())
                .into_value(py)
                .into_bound(py)
                .into_any()
        };
        Self::close_with(slf, exc)
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        if check_bytes_like(data).is_err() {
            return Err(PyAssertionError::new_err(data.repr()?.unbind()));
        }
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
        let (conn_lost, closing, buffered_now) = {
            let st = me.st.borrow(py);
            (st.conn_lost, st.closing, !st.buf.is_empty())
        };
        if conn_lost > 0 || closing {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                logger(py)?.call_method1(
                    "warning",
                    ("pipe closed by peer or os.write(pipe, data) raised exception.",),
                )?;
            }
            me.st.borrow_mut(py).conn_lost += 1;
            return Ok(());
        }
        let mut rest = bytes;
        if !buffered_now {
            match write_fd(me.link.fd(py), bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => rest = &bytes[n..],
                Err(e) if would_block(&e) => {}
                Err(e) => return Self::write_failed(slf, e),
            }
            me.link
                .add_watch(slf.as_any(), pyo3::intern!(py, "_write_ready"), true)?;
        }
        me.st.borrow_mut(py).buf.push(rest);
        me.maybe_pause_protocol(py)
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let joined = PyBytes::new(slf.py(), b"").call_method1("join", (list_of_data,))?;
        Self::write(slf, &joined)
    }

    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let res = {
            let st = me.st.borrow(py);
            if st.buf.is_empty() {
                return Ok(());
            }
            write_fd(me.link.fd(py), st.buf.pending())
        };
        let n = match res {
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => {
                me.st.borrow_mut(py).buf.clear();
                // The writer goes here: with the buffer now empty,
                // `_close` would not remove it.
                me.link.remove_watch(py, true)?;
                return Self::write_failed(slf, e);
            }
        };
        let all = {
            let mut st = me.st.borrow_mut(py);
            let all = n == st.buf.len();
            st.buf.consume(n);
            all
        };
        if !all {
            return Ok(());
        }
        me.link.remove_watch(py, true)?;
        let resume = {
            let mut st = me.st.borrow_mut(py);
            st.flow.should_resume(0)
        };
        if resume {
            me.link.flow_callback(py, "resume_writing")?; // may write more
        }
        if me.st.borrow(py).closing {
            me.link.remove_watch(py, false)?;
            let none = py.None().into_bound(py);
            me.link
                .connection_lost(py, &none, true, || me.st.borrow_mut(py).pipe.take())?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let now = {
            let mut st = me.st.borrow_mut(py);
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            st.buf.is_empty()
        };
        if now {
            me.link.remove_watch(py, false)?;
            me.link
                .schedule_connection_lost(slf.as_any(), py.None().into_bound(py))?;
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let open = {
            let st = slf.get().st.borrow(slf.py());
            st.pipe.is_some() && !st.closing
        };
        if open {
            Self::write_eof(slf)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_with(slf, slf.py().None().into_bound(slf.py()))
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closing
    }

    #[pyo3(signature = (exc, message = "Fatal error on pipe transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, exc, message)
    }

    #[pyo3(signature = (exc = None))]
    fn _close(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let exc = exc.unwrap_or_else(|| slf.py().None().into_bound(slf.py()));
        Self::close_with(slf, exc)
    }

    fn _call_connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        self.link
            .connection_lost(py, &exc, true, || self.st.borrow_mut(py).pipe.take())
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

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        self.link.set_protocol(protocol);
    }

    fn get_protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.link.protocol_obj(py)
    }

    #[getter]
    fn fd(&self, py: Python<'_>) -> RawFd {
        self.link.fd(py)
    }

    #[getter]
    fn pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).pipe.as_ref().map(|p| p.clone_ref(py))
    }

    /// `transport._pipe = ...`, which tests do to silence the finalizer.
    #[setter]
    fn set_pipe(&self, py: Python<'_>, value: Option<Py<PyAny>>) {
        let old = std::mem::replace(&mut self.st.borrow_mut(py).pipe, value);
        drop(old);
    }

    #[getter(r#loop)]
    fn loop_obj(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.link.lp(py).map(|l| l.into_any().unbind())
    }

    #[getter]
    fn conn_lost(&self, py: Python<'_>) -> u32 {
        self.st.borrow(py).conn_lost
    }

    #[getter]
    fn protocol_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).flow.paused
    }

    /// Close the pipe without telling the protocol (the `__del__` path).
    fn _close_pipe(&self, py: Python<'_>) -> PyResult<()> {
        let pipe = self.st.borrow_mut(py).pipe.take();
        close_object(py, pipe)
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.link.traverse(&visit)?;
        if let Some(st) = self.st.gc_borrow() {
            visit.call(&st.pipe)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.link.clear();
        let taken = self.st.gc_borrow_mut().map(|mut st| st.pipe.take());
        drop(taken);
    }
}
