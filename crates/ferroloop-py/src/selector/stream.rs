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
use std::sync::atomic::AtomicBool;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::cell::GilCell;
use crate::errors::io_err;
use crate::link::{
    check_bytes_like, is_buffered_protocol, is_exit, read_bytes, would_block, ByteView, LinkCell,
    MAX_READ,
};
use crate::loop_core::LoopCore;
use crate::selector::sel::{self, sock_methods, SelState, SockTransport};
use crate::stream_half::{self as half, stream_methods, StreamHalf, StreamTransport};

const READ_FAILED: &str = "Fatal read error on socket transport";
const WRITE_FAILED: &str = "Fatal write error on socket transport";

/// The state and work of one stream transport (see the module docs).
#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct StreamCore {
    link: LinkCell,
    sel: GilCell<SelState>,
    st: GilCell<StreamHalf>,
    /// The last read was large (`link::read_bytes`).
    big_reads: AtomicBool,
    /// A TCP socket: read edge-triggered (see [`StreamCore::begin_reading`]).
    edge: bool,
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

    /// Start (or resume) reading. A TCP socket is watched edge-triggered
    /// on epoll: a level-triggered registration goes back on the kernel's
    /// ready list after each report, and the next wait polls the socket
    /// again before it can sleep. asyncio reads once per readiness, so
    /// every read that may have left bytes queued (one that filled its
    /// buffer) asks for the socket to be looked at again
    /// (`LoopCore::refresh_fd`); a shorter read took all that was queued,
    /// and each arrival after it is a new edge. Unix sockets stay
    /// level-triggered: a read there stops short, with bytes left, at a
    /// message carrying descriptors or credentials.
    fn begin_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let method = pyo3::intern!(py, "_read_ready");
        if me.edge {
            me.link.add_edge_reader(slf.as_any(), method)
        } else {
            me.link.add_watch(slf.as_any(), method, false)
        }
    }
}

/// True for an IPv4 or IPv6 socket object (its family as the socket type
/// stores it: `socket.socket.family` makes an enum of it). Anything that
/// is not a `socket.socket` is read level-triggered.
fn is_inet(sock: &Bound<'_, PyAny>) -> bool {
    let py = sock.py();
    let Ok((base, [family, _, _])) = crate::accepted::raw_socket(py) else {
        return false;
    };
    sock.is_instance(base.bind(py)).unwrap_or(false)
        && crate::accepted::raw_get(family.bind(py), sock)
            .and_then(|f| f.extract::<i32>())
            .is_ok_and(|f| f == libc::AF_INET || f == libc::AF_INET6)
}

impl StreamTransport for StreamCore {
    fn half(&self) -> &GilCell<StreamHalf> {
        &self.st
    }
}

sock_methods!(StreamCore);
stream_methods!(StreamCore);

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

impl StreamCore {
    /// A read filled its buffer: on an edge-triggered registration, have
    /// the next wait look at the socket again.
    fn may_have_more(&self, py: Python<'_>, fd: RawFd) {
        if self.edge {
            if let Some(lp) = self.link.lp(py) {
                lp.get().refresh_fd(py, fd);
            }
        }
    }

    fn read_data(slf: &Bound<'_, Self>, fd: RawFd, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let big = &slf.get().big_reads;
        let data = match read_bytes(py, fd, big, recv_fd) {
            Ok(d) => d,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return sel::fatal_error(slf, io_err(e), READ_FAILED),
        };
        if data.as_bytes().is_empty() {
            return half::on_eof(slf, protocol);
        }
        if data.as_bytes().len() == MAX_READ {
            slf.get().may_have_more(py, fd);
        }
        half::data_received(slf, protocol, data)
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
            recv_fd(fd, ptr, len).map(|n| (n, n == len))
        });
        drop(buf);
        let n = match got {
            Ok(Ok((n, full))) => {
                if full {
                    slf.get().may_have_more(py, fd);
                }
                n
            }
            Ok(Err(e)) if would_block(&e) => return Ok(()),
            Ok(Err(e)) => return sel::fatal_error(slf, io_err(e), READ_FAILED),
            Err(e) if is_exit(py, &e) => return Err(e),
            Err(e) => return sel::fatal_error(slf, e, READ_FAILED),
        };
        if n == 0 {
            return half::on_eof(slf, protocol);
        }
        let res = protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (n,));
        half::after_callback(
            slf,
            res,
            "Fatal error: protocol.buffer_updated() call failed.",
        )
    }
}

#[pymethods]
impl StreamCore {
    #[new]
    #[pyo3(signature = (lp, sock, protocol, transport, server = None))]
    pub(crate) fn py_new(
        lp: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
        server: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let fd: RawFd = sock
            .call_method0(pyo3::intern!(sock.py(), "fileno"))?
            .extract()?;
        let buffered = is_buffered_protocol(protocol)?;
        Ok(StreamCore {
            link: LinkCell::new(fd, lp, protocol, transport),
            sel: GilCell::new(SelState::new(sock, server)),
            st: GilCell::new(StreamHalf::new(buffered)),
            big_reads: AtomicBool::new(false),
            edge: is_inet(sock),
        })
    }

    /// Schedule `connection_made`, the start of reading and the waiter, in
    /// that order, as asyncio's transport constructor does.
    #[pyo3(signature = (waiter = None))]
    pub(crate) fn _start(slf: &Bound<'_, Self>, waiter: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let start = slf.getattr(pyo3::intern!(slf.py(), "_add_reader_cb"))?;
        slf.get().link.start(slf.py(), Some(start), waiter)
    }

    /// `_add_reader(fd, _read_ready)`: start reading unless paused or
    /// closing by now.
    fn _add_reader_cb(slf: &Bound<'_, Self>) -> PyResult<()> {
        sel::start_reading(slf)
    }

    pub(crate) fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
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

    pub(crate) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        check_bytes_like(data)?;
        half::check_writable(me, py)?;
        let view;
        let bytes: &[u8] = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes(),
            Err(_) => {
                view = ByteView::new(data, false)?;
                view.as_slice()
            }
        };
        if bytes.is_empty() || half::lost_write(me, py)? {
            return Ok(());
        }
        let mut rest = bytes;
        if me.st.borrow(py).buf.is_empty() {
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
        half::maybe_pause(me, py)
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
                return half::write_failed(me, py, &exc);
            }
        };
        me.st.borrow_mut(py).buf.consume(n);
        half::maybe_resume(me, py)?; // may write more
        let (empty, closing, eof) = {
            let st = me.st.borrow(py);
            (st.buf.is_empty(), me.sel.borrow(py).closing, st.eof)
        };
        if !empty {
            return Ok(());
        }
        me.link.remove_watch(py, true)?;
        half::buffer_emptied(me, py)?;
        if closing {
            Self::_call_connection_lost(slf, py.None().into_bound(py))
        } else if eof {
            half::shutdown_wr(fd)
        } else {
            Ok(())
        }
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let connected = me.st.borrow(py).protocol_connected;
        sel::connection_lost(me, py, &exc, connected)?;
        half::closed_by_peer(me, py)
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.link.traverse(&visit)?;
        sel::traverse(&self.sel, &visit)?;
        half::traverse(&self.st, &visit)
    }

    fn __clear__(&self) {
        self.link.clear();
        sel::clear(&self.sel);
        half::clear(&self.st);
    }
}
