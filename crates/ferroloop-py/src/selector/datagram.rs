//! `DatagramCore`: the native half of ferroloop's datagram transports (UDP
//! and Unix datagram sockets, `create_datagram_endpoint`).
//!
//! The rules, messages and callback order are those of asyncio's
//! `_SelectorDatagramTransport`, with one deliberate difference: one read
//! readiness delivers up to [`MAX_DATAGRAMS_PER_READ`] queued datagrams, as
//! libuv (and so uvloop) does, instead of one per pass. The socket's own
//! `recvfrom`, `send` and `sendto` (C methods of the socket object) do the
//! system calls, so addresses, name resolution and errors are exactly the
//! socket module's.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::cell::GilCell;
use crate::link::{
    check_bytes_like, is_exit, logger, Flow, LinkCell, LOG_THRESHOLD_FOR_CONNLOST_WRITES, MAX_READ,
};
use crate::loop_core::LoopCore;
use crate::selector::sel::{self, sock_methods, SelState, SockTransport};

/// Datagrams read per read readiness at most, so one busy socket cannot
/// starve the rest of the loop.
const MAX_DATAGRAMS_PER_READ: usize = 16;
const DGRAM_READ_FAILED: &str = "Fatal read error on datagram transport";
const DGRAM_WRITE_FAILED: &str = "Fatal write error on datagram transport";

struct DgSt {
    /// The remote address given to `create_datagram_endpoint`, if any.
    address: Option<Py<PyAny>>,
    /// The socket is connected (`extra['peername']` is set): `send`, not
    /// `sendto`.
    connected: bool,
    buf: VecDeque<(Py<PyAny>, Py<PyAny>)>,
    buf_size: usize,
    flow: Flow,
}

/// The state and work of one datagram transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct DatagramCore {
    link: LinkCell,
    sel: GilCell<SelState>,
    st: GilCell<DgSt>,
}

impl SockTransport for DatagramCore {
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
        let taken = {
            let mut st = self.st.borrow_mut(py);
            st.buf_size = 0;
            std::mem::take(&mut st.buf)
        };
        drop(taken);
    }
}

sock_methods!(DatagramCore);

/// How a socket call ended, sorted as asyncio's `except` clauses sort it.
enum Outcome<T> {
    Done(T),
    WouldBlock,
    /// An OSError: goes to `protocol.error_received`.
    OsError(PyErr),
    /// Anything else: fatal (SystemExit and KeyboardInterrupt propagate).
    Fatal(PyErr),
}

fn classify<T>(py: Python<'_>, res: PyResult<T>) -> PyResult<Outcome<T>> {
    Ok(match res {
        Ok(v) => Outcome::Done(v),
        Err(e)
            if e.is_instance_of::<PyBlockingIOError>(py)
                || e.is_instance_of::<PyInterruptedError>(py) =>
        {
            Outcome::WouldBlock
        }
        Err(e) if e.is_instance_of::<PyOSError>(py) => Outcome::OsError(e),
        Err(e) if is_exit(py, &e) => return Err(e),
        Err(e) => Outcome::Fatal(e),
    })
}

impl DatagramCore {
    fn bound_sock<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.sel
            .borrow(py)
            .sock
            .as_ref()
            .map(|s| s.bind(py).clone())
    }

    fn error_received(&self, py: Python<'_>, err: PyErr) -> PyResult<()> {
        let protocol = self.link.protocol_obj(py);
        protocol
            .bind(py)
            .call_method1(pyo3::intern!(py, "error_received"), (err.into_value(py),))?;
        Ok(())
    }

    /// `sock.send(data)` on a connected socket, else `sock.sendto(data, addr)`.
    fn send_one(
        &self,
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        addr: &Bound<'_, PyAny>,
    ) -> PyResult<Outcome<()>> {
        let connected = self.st.borrow(py).connected;
        let res = if connected {
            sock.call_method1(pyo3::intern!(py, "send"), (data,))
        } else {
            sock.call_method1(pyo3::intern!(py, "sendto"), (data, addr))
        };
        classify(py, res.map(drop))
    }

    fn maybe_pause_protocol(&self, py: Python<'_>) -> PyResult<()> {
        let pause = {
            let mut st = self.st.borrow_mut(py);
            let size = st.buf_size;
            st.flow.should_pause(size)
        };
        if pause {
            self.link.flow_callback(py, "pause_writing")?;
        }
        Ok(())
    }
}

#[pymethods]
impl DatagramCore {
    #[new]
    #[pyo3(signature = (lp, sock, protocol, transport, address, connected))]
    fn py_new(
        lp: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
        address: Option<&Bound<'_, PyAny>>,
        connected: bool,
    ) -> PyResult<Self> {
        let fd: RawFd = sock
            .call_method0(pyo3::intern!(sock.py(), "fileno"))?
            .extract()?;
        Ok(DatagramCore {
            link: LinkCell::new(fd, lp, protocol, transport),
            sel: GilCell::new(SelState::new(sock, None)),
            st: GilCell::new(DgSt {
                address: address.filter(|a| !a.is_none()).map(|a| a.clone().unbind()),
                connected,
                buf: VecDeque::new(),
                buf_size: 0,
                flow: Flow::default(),
            }),
        })
    }

    /// Schedule `connection_made`, the start of reading and the waiter.
    #[pyo3(signature = (waiter = None))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let start = slf.getattr(pyo3::intern!(py, "_add_reader_cb"))?;
        slf.get().link.start(py, Some(start), waiter)
    }

    fn _add_reader_cb(slf: &Bound<'_, Self>) -> PyResult<()> {
        sel::start_reading(slf)
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        for _ in 0..MAX_DATAGRAMS_PER_READ {
            {
                let s = me.sel.borrow(py);
                if s.conn_lost > 0 || s.closing || s.paused {
                    return Ok(());
                }
            }
            let Some(sock) = me.bound_sock(py) else {
                return Ok(());
            };
            let res = sock.call_method1(pyo3::intern!(py, "recvfrom"), (MAX_READ,));
            match classify(py, res)? {
                Outcome::Done(pair) => {
                    let pair = pair.cast_into::<PyTuple>()?;
                    let protocol = me.link.protocol_obj(py);
                    protocol.bind(py).call_method1(
                        pyo3::intern!(py, "datagram_received"),
                        (pair.get_item(0)?, pair.get_item(1)?),
                    )?;
                }
                Outcome::WouldBlock => return Ok(()),
                Outcome::OsError(e) => return me.error_received(py, e),
                Outcome::Fatal(e) => return sel::fatal_error(slf, e, DGRAM_READ_FAILED),
            }
        }
        Ok(())
    }

    #[pyo3(signature = (data, addr = None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        check_bytes_like(data)?;
        if data.len()? == 0 {
            return Ok(());
        }
        let mut addr = addr.unwrap_or_else(|| py.None().into_bound(py));
        let address = me.st.borrow(py).address.as_ref().map(|a| a.clone_ref(py));
        if let Some(address) = &address {
            let address = address.bind(py);
            if !addr.is_none() && !addr.eq(address)? {
                return Err(PyValueError::new_err(format!(
                    "Invalid address: must be None or {}",
                    address.str()?
                )));
            }
            addr = address.clone();
        }
        let conn_lost = me.sel.borrow(py).conn_lost;
        if conn_lost > 0 && address.is_some() {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                logger(py)?.call_method1("warning", ("socket.send() raised exception.",))?;
            }
            me.sel.borrow_mut(py).conn_lost += 1;
            return Ok(());
        }
        if me.st.borrow(py).buf.is_empty() {
            let Some(sock) = me.bound_sock(py) else {
                return Ok(());
            };
            match me.send_one(py, &sock, data, &addr)? {
                Outcome::Done(()) => return Ok(()),
                Outcome::WouldBlock => {
                    me.link
                        .add_watch(slf.as_any(), pyo3::intern!(py, "_sendto_ready"), true)?;
                }
                Outcome::OsError(e) => return me.error_received(py, e),
                Outcome::Fatal(e) => return sel::fatal_error(slf, e, DGRAM_WRITE_FAILED),
            }
        }
        // What is buffered must not change: keep an immutable copy.
        let copy = PyBytes::new(py, crate::link::ByteView::new(data, false)?.as_slice());
        let n = copy.as_bytes().len();
        {
            let mut st = me.st.borrow_mut(py);
            st.buf.push_back((copy.into_any().unbind(), addr.unbind()));
            st.buf_size += n;
        }
        me.maybe_pause_protocol(py)
    }

    fn _sendto_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        loop {
            let item = {
                let mut st = me.st.borrow_mut(py);
                let item = st.buf.pop_front();
                if let Some((data, _)) = &item {
                    st.buf_size -= data.bind(py).len()?;
                }
                item
            };
            let Some((data, addr)) = item else { break };
            let Some(sock) = me.bound_sock(py) else {
                return Ok(());
            };
            match me.send_one(py, &sock, data.bind(py), addr.bind(py))? {
                Outcome::Done(()) => {}
                Outcome::WouldBlock => {
                    let mut st = me.st.borrow_mut(py);
                    st.buf_size += data.bind(py).len()?;
                    st.buf.push_front((data, addr));
                    break;
                }
                Outcome::OsError(e) => return me.error_received(py, e),
                Outcome::Fatal(e) => return sel::fatal_error(slf, e, DGRAM_WRITE_FAILED),
            }
        }
        let resume = {
            let mut st = me.st.borrow_mut(py);
            let size = st.buf_size;
            st.flow.should_resume(size)
        };
        if resume {
            me.link.flow_callback(py, "resume_writing")?; // may send more
        }
        if me.st.borrow(py).buf.is_empty() {
            me.link.remove_watch(py, true)?;
            if me.sel.borrow(py).closing {
                sel::connection_lost(me, py, &py.None().into_bound(py), true)?;
            }
        }
        Ok(())
    }

    fn _call_connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        sel::connection_lost(self, py, &exc, true)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.st.borrow(py).buf_size
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

    #[getter]
    fn protocol_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).flow.paused
    }

    #[getter]
    fn address(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).address.as_ref().map(|a| a.clone_ref(py))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.link.traverse(&visit)?;
        sel::traverse(&self.sel, &visit)?;
        if let Some(st) = self.st.gc_borrow() {
            visit.call(&st.address)?;
            for (d, a) in &st.buf {
                visit.call(d)?;
                visit.call(a)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.link.clear();
        sel::clear(&self.sel);
        let taken = self
            .st
            .gc_borrow_mut()
            .map(|mut st| (st.address.take(), std::mem::take(&mut st.buf)));
        drop(taken);
    }
}
