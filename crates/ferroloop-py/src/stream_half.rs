//! The protocol-facing half of a stream transport, shared by both engines:
//! the write buffer and water marks, EOF, the sendfile waiter, the protocol
//! callbacks' error rules, and the Python methods that only read or change
//! that state (generated for each stream core by [`stream_methods`]).
//!
//! Each engine's stream core (`selector::stream::StreamCore`,
//! `proactor::stream::RingStreamCore`) keeps a [`StreamHalf`] and says, by
//! [`StreamTransport::write_buffer_size`], how many accepted bytes the
//! kernel has not taken yet (the ring's count those in flight too).

use pyo3::exceptions::{PyConnectionError, PyRuntimeError};
use pyo3::prelude::*;

use crate::cell::GilCell;
use crate::link::{is_exit, logger, set_future, Flow, WriteBuf, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use crate::loop_core::LoopCore;
use crate::selector::sel::{self, SockTransport};

/// A stream transport's protocol-facing state.
pub struct StreamHalf {
    /// The protocol is an `asyncio.BufferedProtocol`.
    pub buffered: bool,
    pub protocol_connected: bool,
    /// Bytes `write` accepted that no send has taken yet.
    pub buf: WriteBuf,
    pub flow: Flow,
    /// `write_eof()` was called.
    pub eof: bool,
    /// The future `loop.sendfile` waits on for the buffer to empty.
    pub empty_waiter: Option<Py<PyAny>>,
}

impl StreamHalf {
    pub fn new(buffered: bool) -> Self {
        StreamHalf {
            buffered,
            protocol_connected: true,
            buf: WriteBuf::default(),
            flow: Flow::default(),
            eof: false,
            empty_waiter: None,
        }
    }
}

/// A stream socket transport core, on either engine.
pub trait StreamTransport: SockTransport {
    fn half(&self) -> &GilCell<StreamHalf>;

    /// Accepted bytes not yet taken by the kernel.
    fn write_buffer_size(&self, py: Python<'_>) -> usize {
        self.half().borrow(py).buf.len()
    }
}

/// `pause_writing()` if the buffer crossed the high-water mark.
pub fn maybe_pause<T: StreamTransport>(me: &T, py: Python<'_>) -> PyResult<()> {
    let size = me.write_buffer_size(py);
    if me.half().borrow_mut(py).flow.should_pause(size) {
        me.link().flow_callback(py, "pause_writing")?;
    }
    Ok(())
}

/// `resume_writing()` if the buffer fell to the low-water mark.
pub fn maybe_resume<T: StreamTransport>(me: &T, py: Python<'_>) -> PyResult<()> {
    let size = me.write_buffer_size(py);
    if me.half().borrow_mut(py).flow.should_resume(size) {
        me.link().flow_callback(py, "resume_writing")?;
    }
    Ok(())
}

/// What `write` checks before looking at the bytes: the errors asyncio
/// raises after `write_eof()` and during `sendfile`.
pub fn check_writable<T: StreamTransport>(me: &T, py: Python<'_>) -> PyResult<()> {
    let h = me.half().borrow(py);
    if h.eof {
        return Err(PyRuntimeError::new_err(
            "Cannot call write() after write_eof()",
        ));
    }
    if h.empty_waiter.is_some() {
        return Err(PyRuntimeError::new_err(
            "unable to write; sendfile is in progress",
        ));
    }
    Ok(())
}

/// A write after the connection was lost: counted, and logged from the
/// fifth on, as asyncio does. True when the write must go no further.
pub fn lost_write<T: StreamTransport>(me: &T, py: Python<'_>) -> PyResult<bool> {
    let conn_lost = me.sel().borrow(py).conn_lost;
    if conn_lost == 0 {
        return Ok(false);
    }
    if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
        logger(py)?.call_method1("warning", ("socket.send() raised exception.",))?;
    }
    me.sel().borrow_mut(py).conn_lost += 1;
    Ok(true)
}

/// The end of a protocol callback: exits propagate, any other error is
/// fatal with `message`.
pub fn after_callback<T: SockTransport>(
    slf: &Bound<'_, T>,
    res: PyResult<Bound<'_, PyAny>>,
    message: &str,
) -> PyResult<()> {
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_exit(slf.py(), &e) => Err(e),
        Err(e) => sel::fatal_error(slf, e, message),
    }
}

/// Hand bytes read to the protocol's `data_received`; its exception ends
/// the transport as asyncio's reader does (see [`after_callback`]).
pub fn data_received<T: SockTransport>(
    slf: &Bound<'_, T>,
    protocol: &Bound<'_, PyAny>,
    data: Bound<'_, pyo3::types::PyBytes>,
) -> PyResult<()> {
    let res = protocol.call_method1(pyo3::intern!(slf.py(), "data_received"), (&data,));
    crate::link::recycle(data);
    after_callback(
        slf,
        res,
        "Fatal error: protocol.data_received() call failed.",
    )
}

/// The peer closed its side: `eof_received()`; unless it asks to keep the
/// transport open, close it.
pub fn on_eof<T: SockTransport>(slf: &Bound<'_, T>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    let link = slf.get().link();
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
        slf.get().end_reading(py)
    } else {
        sel::close(slf)
    }
}

pub fn empty_waiter<T: StreamTransport>(me: &T, py: Python<'_>) -> Option<Py<PyAny>> {
    me.half()
        .borrow(py)
        .empty_waiter
        .as_ref()
        .map(|w| w.clone_ref(py))
}

/// The buffer emptied: wake `sendfile`'s waiter, if any.
pub fn buffer_emptied<T: StreamTransport>(me: &T, py: Python<'_>) -> PyResult<()> {
    match empty_waiter(me, py) {
        Some(w) => set_future(py, &w, None),
        None => Ok(()),
    }
}

/// A write failed: `exc` to `sendfile`'s waiter, if any.
pub fn write_failed<T: StreamTransport>(
    me: &T,
    py: Python<'_>,
    exc: &Bound<'_, PyAny>,
) -> PyResult<()> {
    match empty_waiter(me, py) {
        Some(w) => set_future(py, &w, Some(exc)),
        None => Ok(()),
    }
}

/// After `connection_lost`: `sendfile`'s waiter, if any, fails. The error
/// is made only for a waiter, as asyncio makes it (making it for every
/// connection cost some 2,300 instructions).
pub fn closed_by_peer<T: StreamTransport>(me: &T, py: Python<'_>) -> PyResult<()> {
    match empty_waiter(me, py) {
        Some(w) => {
            let err = PyConnectionError::new_err("Connection is closed by peer");
            set_future(py, &w, Some(err.value(py).as_any()))
        }
        None => Ok(()),
    }
}

pub fn shutdown_wr(fd: std::os::fd::RawFd) -> PyResult<()> {
    // SAFETY: a plain system call on a descriptor number.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
        return Err(crate::errors::io_err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `write_eof()`: the write side is shut down now if nothing is pending,
/// else once the buffer is written.
pub fn write_eof<T: StreamTransport>(me: &T, py: Python<'_>) -> PyResult<()> {
    {
        let mut h = me.half().borrow_mut(py);
        if me.sel().borrow(py).closing || h.eof {
            return Ok(());
        }
        h.eof = true;
    }
    if me.write_buffer_size(py) == 0 {
        shutdown_wr(me.link().fd(py))?;
    }
    Ok(())
}

pub fn make_empty_waiter<T: StreamTransport>(me: &T, py: Python<'_>) -> PyResult<Py<PyAny>> {
    if me.half().borrow(py).empty_waiter.is_some() {
        return Err(PyRuntimeError::new_err("Empty waiter is already set"));
    }
    let Some(lp) = me.link().lp(py) else {
        return Err(PyRuntimeError::new_err("the transport is closed"));
    };
    let fut = LoopCore::create_future(&lp)?;
    me.half().borrow_mut(py).empty_waiter = Some(fut.clone_ref(py));
    if me.write_buffer_size(py) == 0 {
        set_future(py, &fut, None)?;
    }
    Ok(fut)
}

pub fn set_protocol<T: StreamTransport>(me: &T, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = protocol.py();
    let buffered = crate::link::is_buffered_protocol(protocol)?;
    {
        let mut h = me.half().borrow_mut(py);
        h.buffered = buffered;
        h.protocol_connected = true;
    }
    me.link().set_protocol(protocol);
    Ok(())
}

pub fn traverse(
    half: &GilCell<StreamHalf>,
    visit: &pyo3::PyVisit<'_>,
) -> Result<(), pyo3::PyTraverseError> {
    if let Some(h) = half.gc_borrow() {
        visit.call(&h.empty_waiter)?;
    }
    Ok(())
}

pub fn clear(half: &GilCell<StreamHalf>) {
    let taken = half.gc_borrow_mut().map(|mut h| h.empty_waiter.take());
    drop(taken);
}

/// The Python methods of a stream core that only read or change the shared
/// state: the same on both engines, written once. (A second `#[pymethods]`
/// block of the class, which the `multiple-pymethods` feature allows.)
macro_rules! stream_methods {
    ($core:ty) => {
        #[pyo3::pymethods]
        impl $core {
            /// `writelines`: the buffers joined, then one `write`.
            fn writelines(
                slf: &pyo3::Bound<'_, Self>,
                list_of_data: &pyo3::Bound<'_, pyo3::PyAny>,
            ) -> pyo3::PyResult<()> {
                let joined = pyo3::types::PyBytes::new(slf.py(), b"")
                    .call_method1("join", (list_of_data,))?;
                Self::write(slf, &joined)
            }

            fn write_eof(&self, py: pyo3::Python<'_>) -> pyo3::PyResult<()> {
                $crate::stream_half::write_eof(self, py)
            }

            fn can_write_eof(&self) -> bool {
                true
            }

            fn get_write_buffer_size(&self, py: pyo3::Python<'_>) -> usize {
                $crate::stream_half::StreamTransport::write_buffer_size(self, py)
            }

            fn get_write_buffer_limits(&self, py: pyo3::Python<'_>) -> (i64, i64) {
                let h = $crate::stream_half::StreamTransport::half(self).borrow(py);
                (h.flow.low, h.flow.high)
            }

            #[pyo3(signature = (high = None, low = None))]
            fn set_write_buffer_limits(
                &self,
                py: pyo3::Python<'_>,
                high: Option<i64>,
                low: Option<i64>,
            ) -> pyo3::PyResult<()> {
                {
                    let half = $crate::stream_half::StreamTransport::half(self);
                    $crate::link::set_limits(&mut half.borrow_mut(py).flow, high, low)?;
                }
                $crate::stream_half::maybe_pause(self, py)
            }

            fn set_protocol(&self, protocol: &pyo3::Bound<'_, pyo3::PyAny>) -> pyo3::PyResult<()> {
                $crate::stream_half::set_protocol(self, protocol)
            }

            fn _make_empty_waiter(
                &self,
                py: pyo3::Python<'_>,
            ) -> pyo3::PyResult<pyo3::Py<pyo3::PyAny>> {
                $crate::stream_half::make_empty_waiter(self, py)
            }

            fn _reset_empty_waiter(&self, py: pyo3::Python<'_>) {
                let half = $crate::stream_half::StreamTransport::half(self);
                let old = half.borrow_mut(py).empty_waiter.take();
                drop(old);
            }

            #[getter]
            fn eof(&self, py: pyo3::Python<'_>) -> bool {
                $crate::stream_half::StreamTransport::half(self)
                    .borrow(py)
                    .eof
            }

            #[getter]
            fn protocol_paused(&self, py: pyo3::Python<'_>) -> bool {
                $crate::stream_half::StreamTransport::half(self)
                    .borrow(py)
                    .flow
                    .paused
            }

            #[getter]
            fn empty_waiter(&self, py: pyo3::Python<'_>) -> Option<pyo3::Py<pyo3::PyAny>> {
                $crate::stream_half::empty_waiter(self, py)
            }

            #[getter]
            fn server(&self, py: pyo3::Python<'_>) -> Option<pyo3::Py<pyo3::PyAny>> {
                let sel = $crate::selector::sel::SockTransport::sel(self).borrow(py);
                sel.server.as_ref().map(|s| s.clone_ref(py))
            }
        }
    };
}
pub(crate) use stream_methods;
