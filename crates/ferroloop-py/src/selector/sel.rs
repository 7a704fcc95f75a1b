//! What the socket transports (stream and datagram) share beyond
//! [`LinkCell`]: asyncio's `_SelectorTransport` rules for reading, pausing,
//! closing, aborting and fatal errors. Each transport supplies its write
//! buffer through [`SockTransport`]; these functions do the rest.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::cell::GilCell;
use crate::link::LinkCell;

/// The state `_SelectorTransport` keeps besides the write buffer.
pub struct SelState {
    pub sock: Option<Py<PyAny>>,
    pub server: Option<Py<PyAny>>,
    /// Set when a call to `connection_lost` has been scheduled; counts the
    /// writes made after that.
    pub conn_lost: u32,
    /// Set by `close()` (and by a forced close).
    pub closing: bool,
    /// Set by `pause_reading()`.
    pub paused: bool,
}

impl SelState {
    pub fn new(sock: &Bound<'_, PyAny>, server: Option<&Bound<'_, PyAny>>) -> Self {
        SelState {
            sock: Some(sock.clone().unbind()),
            server: server.filter(|s| !s.is_none()).map(|s| s.clone().unbind()),
            conn_lost: 0,
            closing: false,
            paused: false,
        }
    }
}

/// A socket transport core: its link, its shared state, and its buffer.
/// The I/O hooks default to the selector engine's (watch the descriptor);
/// the proactor's stream transport moves its bytes with ring ops instead.
pub trait SockTransport:
    pyo3::PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync
{
    fn link(&self) -> &LinkCell;
    fn sel(&self) -> &GilCell<SelState>;
    fn has_buffered(&self, py: Python<'_>) -> bool;
    fn clear_buffer(&self, py: Python<'_>);

    /// Start (or resume) reading: `_add_reader(fd, _read_ready)`.
    fn begin_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        slf.get()
            .link()
            .add_watch(slf.as_any(), pyo3::intern!(py, "_read_ready"), false)
    }

    /// Reading paused: `_remove_reader(fd)`.
    fn pause_io(&self, py: Python<'_>) -> PyResult<()> {
        self.link().remove_watch(py, false)
    }

    /// Reading ends for good (closing): `_remove_reader(fd)`.
    fn end_reading(&self, py: Python<'_>) -> PyResult<()> {
        self.link().remove_watch(py, false)
    }

    /// Writing ends for good (closing, aborting): `_remove_writer(fd)`.
    fn end_writing(&self, py: Python<'_>) -> PyResult<()> {
        self.link().remove_watch(py, true)
    }

    /// At the end of `_call_connection_lost`: take the socket to be closed
    /// with `sock.close()` (None when the transport closed it itself).
    fn take_sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sel().borrow_mut(py).sock.take()
    }
}

pub fn is_reading<T: SockTransport>(me: &T, py: Python<'_>) -> bool {
    let st = me.sel().borrow(py);
    !st.closing && !st.paused
}

/// `_add_reader(fd, _read_ready)`: start reading unless paused or closing.
pub fn start_reading<T: SockTransport>(slf: &Bound<'_, T>) -> PyResult<()> {
    let py = slf.py();
    if !is_reading(slf.get(), py) {
        return Ok(());
    }
    T::begin_reading(slf)
}

pub fn pause_reading<T: SockTransport>(me: &T, py: Python<'_>) -> PyResult<()> {
    if !is_reading(me, py) {
        return Ok(());
    }
    me.sel().borrow_mut(py).paused = true;
    me.pause_io(py)?;
    if me.link().debug(py) {
        me.link().log(py, "debug", "pauses reading")?;
    }
    Ok(())
}

pub fn resume_reading<T: SockTransport>(slf: &Bound<'_, T>) -> PyResult<()> {
    let py = slf.py();
    let me = slf.get();
    {
        let mut st = me.sel().borrow_mut(py);
        if st.closing || !st.paused {
            return Ok(());
        }
        st.paused = false;
    }
    start_reading(slf)?;
    if me.link().debug(py) {
        me.link().log(py, "debug", "resumes reading")?;
    }
    Ok(())
}

/// `close()`: stop reading; without buffered data, `connection_lost(None)`
/// in the next pass, else once the buffer is written.
pub fn close<T: SockTransport>(slf: &Bound<'_, T>) -> PyResult<()> {
    let py = slf.py();
    let me = slf.get();
    {
        let mut st = me.sel().borrow_mut(py);
        if st.closing {
            return Ok(());
        }
        st.closing = true;
    }
    me.end_reading(py)?;
    if !me.has_buffered(py) {
        me.sel().borrow_mut(py).conn_lost += 1;
        me.end_writing(py)?;
        me.link()
            .schedule_connection_lost(slf.as_any(), py.None().into_bound(py))?;
    }
    Ok(())
}

/// `_force_close(exc)` (and `abort()`): drop the buffer, stop watching,
/// `connection_lost(exc)` in the next pass; once only.
pub fn force_close<T: SockTransport>(
    slf: &Bound<'_, T>,
    exc: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    let py = slf.py();
    let me = slf.get();
    if me.sel().borrow(py).conn_lost > 0 {
        return Ok(());
    }
    if me.has_buffered(py) {
        me.clear_buffer(py);
        me.end_writing(py)?;
    }
    let was_closing = {
        let mut st = me.sel().borrow_mut(py);
        let was = st.closing;
        st.closing = true;
        st.conn_lost += 1;
        was
    };
    if !was_closing {
        me.end_reading(py)?;
    }
    let exc = exc.unwrap_or_else(|| py.None().into_bound(py));
    me.link().schedule_connection_lost(slf.as_any(), exc)
}

/// `_fatal_error`: report (an OSError only in debug mode's log), then force
/// the transport closed.
pub fn fatal_error<T: SockTransport>(
    slf: &Bound<'_, T>,
    err: PyErr,
    message: &str,
) -> PyResult<()> {
    let py = slf.py();
    let link = slf.get().link();
    let exc = err.into_value(py).into_bound(py).into_any();
    if exc.is_instance_of::<PyOSError>() {
        if link.debug(py) {
            link.log_error(py, message, &exc)?;
        }
    } else {
        link.report(py, message, &exc)?;
    }
    force_close(slf, Some(exc))
}

/// `_call_connection_lost(exc)`: tell the protocol (if `connected`), then,
/// whatever it did, close the socket, drop the loop and the protocol, and
/// detach from the server.
pub fn connection_lost<T: SockTransport>(
    me: &T,
    py: Python<'_>,
    exc: &Bound<'_, PyAny>,
    connected: bool,
) -> PyResult<()> {
    let lost = me
        .link()
        .connection_lost(py, exc, connected, || me.take_sock(py));
    let server = me.sel().borrow_mut(py).server.take();
    let detached = match server {
        Some(s) => crate::accepted::server_detach(s.bind(py)),
        None => Ok(()),
    };
    lost?;
    detached
}

/// Close the socket without telling the protocol (the `__del__` path).
pub fn close_sock<T: SockTransport>(me: &T, py: Python<'_>) -> PyResult<()> {
    let sock = me.take_sock(py);
    crate::link::close_object(py, sock)
}

pub fn traverse(
    sel: &GilCell<SelState>,
    visit: &pyo3::PyVisit<'_>,
) -> Result<(), pyo3::PyTraverseError> {
    if let Some(st) = sel.gc_borrow() {
        visit.call(&st.sock)?;
        visit.call(&st.server)?;
    }
    Ok(())
}

pub fn clear(sel: &GilCell<SelState>) {
    let taken = sel
        .gc_borrow_mut()
        .map(|mut st| (st.sock.take(), st.server.take()));
    drop(taken);
}

/// The Python methods every socket transport core has, the same for each:
/// closing, aborting, pausing, and the read-only state asyncio's code and
/// the reprs read. (A second `#[pymethods]` block of the class, which the
/// `multiple-pymethods` feature allows.)
macro_rules! sock_methods {
    ($core:ty) => {
        #[pyo3::pymethods]
        impl $core {
            fn close(slf: &pyo3::Bound<'_, Self>) -> pyo3::PyResult<()> {
                $crate::selector::sel::close(slf)
            }

            fn abort(slf: &pyo3::Bound<'_, Self>) -> pyo3::PyResult<()> {
                $crate::selector::sel::force_close(slf, None)
            }

            #[pyo3(signature = (exc, message = "Fatal error on transport"))]
            fn _fatal_error(
                slf: &pyo3::Bound<'_, Self>,
                exc: &pyo3::Bound<'_, pyo3::PyAny>,
                message: &str,
            ) -> pyo3::PyResult<()> {
                let err = pyo3::PyErr::from_value(exc.clone());
                $crate::selector::sel::fatal_error(slf, err, message)
            }

            fn _force_close(
                slf: &pyo3::Bound<'_, Self>,
                exc: &pyo3::Bound<'_, pyo3::PyAny>,
            ) -> pyo3::PyResult<()> {
                $crate::selector::sel::force_close(slf, (!exc.is_none()).then(|| exc.clone()))
            }

            fn is_closing(&self, py: pyo3::Python<'_>) -> bool {
                $crate::selector::sel::SockTransport::sel(self)
                    .borrow(py)
                    .closing
            }

            fn is_reading(&self, py: pyo3::Python<'_>) -> bool {
                $crate::selector::sel::is_reading(self, py)
            }

            fn pause_reading(&self, py: pyo3::Python<'_>) -> pyo3::PyResult<()> {
                $crate::selector::sel::pause_reading(self, py)
            }

            fn resume_reading(slf: &pyo3::Bound<'_, Self>) -> pyo3::PyResult<()> {
                $crate::selector::sel::resume_reading(slf)
            }

            fn get_protocol(&self, py: pyo3::Python<'_>) -> pyo3::Py<pyo3::PyAny> {
                $crate::selector::sel::SockTransport::link(self).protocol_obj(py)
            }

            #[getter]
            fn fd(&self, py: pyo3::Python<'_>) -> std::os::fd::RawFd {
                $crate::selector::sel::SockTransport::link(self).fd(py)
            }

            #[getter]
            fn sock(&self, py: pyo3::Python<'_>) -> Option<pyo3::Py<pyo3::PyAny>> {
                let sel = $crate::selector::sel::SockTransport::sel(self).borrow(py);
                sel.sock.as_ref().map(|s| s.clone_ref(py))
            }

            #[getter(r#loop)]
            fn loop_obj(&self, py: pyo3::Python<'_>) -> Option<pyo3::Py<pyo3::PyAny>> {
                let link = $crate::selector::sel::SockTransport::link(self);
                link.lp(py).map(|l| l.into_any().unbind())
            }

            #[getter]
            fn conn_lost(&self, py: pyo3::Python<'_>) -> u32 {
                $crate::selector::sel::SockTransport::sel(self)
                    .borrow(py)
                    .conn_lost
            }

            #[getter]
            fn paused(&self, py: pyo3::Python<'_>) -> bool {
                $crate::selector::sel::SockTransport::sel(self)
                    .borrow(py)
                    .paused
            }

            /// Close the socket without telling the protocol (the `__del__` path).
            fn _close_sock(&self, py: pyo3::Python<'_>) -> pyo3::PyResult<()> {
                $crate::selector::sel::close_sock(self, py)
            }
        }
    };
}
pub(crate) use sock_methods;
