//! `RingStreamCore`: the native half of the proactor loop's stream socket
//! transports (TCP and Unix).
//!
//! The protocol sees the same object as on the selector loop (an instance
//! of `ferroloop._transports.SocketTransport`, derived from asyncio's
//! transport classes) with the same rules, messages and callback order;
//! only the I/O half differs:
//!
//! * **Reading**: one recv op is in flight while the transport reads, into
//!   a buffer the op owns (64 KiB, growing to 256 KiB while reads fill it).
//!   Its completion queues `_read_done`, which hands the bytes to
//!   `data_received` (or copies them into `BufferedProtocol.get_buffer`
//!   buffers) and starts the next recv. `pause_reading` leaves an op in
//!   flight; bytes it brings wait in the transport until `resume_reading`.
//! * **Writing**: `write` queues a send op with a copy of the bytes (or
//!   appends them to the write buffer while a send is in flight); the
//!   driver continues partial sends; the send's completion queues
//!   `_write_done`, which sends what accumulated meanwhile. The bytes in
//!   flight count in `get_write_buffer_size()` until the kernel took them.
//! * **Closing**: ops in flight are cancelled; the socket is closed by a
//!   close op in the same ring, after those ops, so its descriptor number
//!   cannot be reused while an op for it is still queued.

use std::io;
use std::os::fd::RawFd;

use ferroloop_core::proactor::{Op, OpId};
use pyo3::exceptions::{PyConnectionError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::cell::GilCell;
use crate::errors::io_err;
use crate::handle::Handle;
use crate::link::{
    check_bytes_like, is_buffered_protocol, is_exit, logger, set_future, would_block, ByteView,
    Flow, LinkCell, WriteBuf, LOG_THRESHOLD_FOR_CONNLOST_WRITES, MAX_READ,
};
use crate::loop_core::LoopCore;
use crate::proactor::Owner;
use crate::selector::sel::{self, SelState, SockTransport};

const READ_FAILED: &str = "Fatal read error on socket transport";
const WRITE_FAILED: &str = "Fatal write error on socket transport";
const FIRST_READ: usize = 64 * 1024;
/// Writes of at least this many bytes try a direct `send` first; smaller
/// ones ride the pass's single `io_uring_enter`.
const DIRECT_SEND_AT: usize = 64 * 1024;

struct St {
    buffered: bool,
    protocol_connected: bool,
    flow: Flow,
    /// Bytes written while a send is in flight.
    buf: WriteBuf,
    eof: bool,
    empty_waiter: Option<Py<PyAny>>,

    read_op: Option<OpId>,
    read_size: usize,
    /// A finished recv not yet handed to the protocol.
    read_result: Option<(io::Result<usize>, Vec<u8>)>,
    read_queued: bool,
    spare_read: Option<Vec<u8>>,

    write_op: Option<OpId>,
    /// Bytes in the send op in flight.
    in_flight: usize,
    write_result: Option<io::Result<usize>>,
    spare_write: Option<Vec<u8>>,

    /// The callbacks completions queue (`_read_done`, `_write_done`).
    read_handle: Option<Py<Handle>>,
    write_handle: Option<Py<Handle>>,
}

/// The state and work of one completion-based stream transport.
#[pyclass(module = "ferroloop._ferroloop", frozen, weakref)]
pub struct RingStreamCore {
    link: LinkCell,
    sel: GilCell<SelState>,
    st: GilCell<St>,
}

impl SockTransport for RingStreamCore {
    fn link(&self) -> &LinkCell {
        &self.link
    }
    fn sel(&self) -> &GilCell<SelState> {
        &self.sel
    }
    fn has_buffered(&self, py: Python<'_>) -> bool {
        let st = self.st.borrow(py);
        st.in_flight > 0 || !st.buf.is_empty()
    }
    fn clear_buffer(&self, py: Python<'_>) {
        let mut st = self.st.borrow_mut(py);
        st.buf.clear();
        st.in_flight = 0;
    }

    fn begin_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let stashed = {
            let st = me.st.borrow(py);
            if st.read_op.is_some() {
                return Ok(());
            }
            st.read_result.is_some()
        };
        if stashed {
            // Bytes that came while paused go to the protocol first.
            me.queue_read_done(py)
        } else {
            Self::submit_recv(slf)
        }
    }

    fn pause_io(&self, _py: Python<'_>) -> PyResult<()> {
        // The recv in flight stays; what it brings waits for resume.
        Ok(())
    }

    fn end_reading(&self, py: Python<'_>) -> PyResult<()> {
        let id = self.st.borrow(py).read_op;
        if let (Some(id), Some(lp)) = (id, self.link.lp(py)) {
            lp.get().ring_cancel(py, id);
        }
        Ok(())
    }

    fn end_writing(&self, py: Python<'_>) -> PyResult<()> {
        let id = self.st.borrow(py).write_op;
        if let (Some(id), Some(lp)) = (id, self.link.lp(py)) {
            lp.get().ring_cancel(py, id);
        }
        Ok(())
    }

    fn take_sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let sock = self.sel.borrow_mut(py).sock.take()?;
        // Cancel what is still in flight, then close through the ring, so
        // the close comes after the ops that name this descriptor.
        self.end_reading(py).ok();
        self.end_writing(py).ok();
        let lp = self.link.lp(py);
        let fd = match sock.bind(py).call_method0("detach") {
            Ok(fd) => fd.extract::<RawFd>().unwrap_or(-1),
            Err(_) => return Some(sock), // not a real socket: close it
        };
        if fd < 0 {
            return None;
        }
        let queued = lp.is_some_and(|lp| {
            lp.get()
                .ring_submit(py, Op::Close { fd }, Owner::Nobody)
                .is_some()
        });
        if !queued {
            // SAFETY: `fd` was detached from its socket object: we own it.
            unsafe { libc::close(fd) };
        }
        None
    }
}

fn send_now(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice for the duration of the call; send
    // only reads it. MSG_NOSIGNAL turns SIGPIPE into EPIPE.
    let n = unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
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

impl RingStreamCore {
    /// A recv completed (called while reaping, no Python code runs).
    pub fn read_completed(
        &self,
        py: Python<'_>,
        result: io::Result<usize>,
        op: Op,
    ) -> Option<Py<Handle>> {
        let Op::Recv { buf, .. } = op else {
            return None;
        };
        let mut st = self.st.borrow_mut(py);
        st.read_op = None;
        let h = st.read_handle.as_ref()?.clone_ref(py);
        if st.read_queued {
            return None;
        }
        st.read_result = Some((result, buf));
        st.read_queued = true;
        Some(h)
    }

    /// A send completed (called while reaping, no Python code runs).
    pub fn write_completed(
        &self,
        py: Python<'_>,
        result: io::Result<usize>,
        op: Op,
    ) -> Option<Py<Handle>> {
        let Op::Send { mut buf, .. } = op else {
            return None;
        };
        let mut st = self.st.borrow_mut(py);
        st.write_op = None;
        buf.clear();
        if buf.capacity() <= 4 * MAX_READ {
            st.spare_write = Some(buf);
        }
        let quiet = result.is_ok()
            && st.buf.is_empty()
            && !st.flow.paused
            && !st.eof
            && st.empty_waiter.is_none()
            && !self.sel.borrow(py).closing;
        if quiet {
            // All sent and nobody to tell: no callback at all (the common
            // case of a reply that fit the socket).
            st.in_flight = 0;
            return None;
        }
        let h = st.write_handle.as_ref()?.clone_ref(py);
        st.write_result = Some(result);
        Some(h)
    }

    fn queue_read_done(&self, py: Python<'_>) -> PyResult<()> {
        let h = {
            let mut st = self.st.borrow_mut(py);
            if st.read_queued {
                return Ok(());
            }
            st.read_queued = true;
            st.read_handle.as_ref().map(|h| h.clone_ref(py))
        };
        let (Some(h), Some(lp)) = (h, self.link.lp(py)) else {
            return Ok(());
        };
        LoopCore::_add_callback(lp.get(), py, h.bind(py));
        Ok(())
    }

    fn submit_recv(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let Some(lp) = me.link.lp(py) else {
            return Ok(());
        };
        let fd = me.link.fd(py);
        let op = {
            let mut st = me.st.borrow_mut(py);
            if st.read_op.is_some() || st.read_result.is_some() {
                return Ok(());
            }
            let size = st.read_size;
            let buf = match st.spare_read.take() {
                Some(b) if b.len() == size => b,
                _ => vec![0u8; size],
            };
            Op::Recv { fd, buf }
        };
        let id = lp
            .get()
            .ring_submit(py, op, Owner::Read(slf.clone().unbind()));
        me.st.borrow_mut(py).read_op = id;
        Ok(())
    }

    /// Send the write buffer, then `more` (nothing may be in flight).
    fn submit_send(slf: &Bound<'_, Self>, more: &[u8]) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let Some(lp) = me.link.lp(py) else {
            return Ok(());
        };
        let fd = me.link.fd(py);
        let op = {
            let mut st = me.st.borrow_mut(py);
            let mut data = st.spare_write.take().unwrap_or_default();
            data.extend_from_slice(st.buf.pending());
            data.extend_from_slice(more);
            st.buf.clear();
            st.in_flight = data.len();
            Op::send(fd, data)
        };
        let id = lp
            .get()
            .ring_submit(py, op, Owner::Write(slf.clone().unbind()));
        me.st.borrow_mut(py).write_op = id;
        Ok(())
    }

    fn buffer_size(&self, py: Python<'_>) -> usize {
        let st = self.st.borrow(py);
        st.in_flight + st.buf.len()
    }

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
            Ok(()) // no further recv: the peer sends nothing more
        } else {
            sel::close(slf)
        }
    }

    /// Hand `data` to a BufferedProtocol through its buffers.
    fn feed_buffered(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        mut data: &[u8],
    ) -> PyResult<()> {
        let py = slf.py();
        const GET_BUFFER_FAILED: &str = "Fatal error: protocol.get_buffer() call failed.";
        while !data.is_empty() {
            let buf = match protocol.call_method1(pyo3::intern!(py, "get_buffer"), (-1,)) {
                Ok(b) => b,
                Err(e) if is_exit(py, &e) => return Err(e),
                Err(e) => return sel::fatal_error(slf, e, GET_BUFFER_FAILED),
            };
            let n = match ByteView::new(&buf, true) {
                Ok(mut v) => {
                    let (ptr, len) = v.as_mut_ptr();
                    if len == 0 {
                        let e = PyRuntimeError::new_err("get_buffer() returned an empty buffer");
                        return sel::fatal_error(slf, e, GET_BUFFER_FAILED);
                    }
                    let n = len.min(data.len());
                    // SAFETY: `ptr` is a writable buffer of `len` bytes held
                    // by the view; `data` is a separate Rust buffer.
                    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, n) };
                    n
                }
                Err(e) if is_exit(py, &e) => return Err(e),
                Err(e) => return sel::fatal_error(slf, e, GET_BUFFER_FAILED),
            };
            drop(buf);
            data = &data[n..];
            let res = protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (n,));
            Self::after_callback(
                slf,
                res,
                "Fatal error: protocol.buffer_updated() call failed.",
            )?;
            let me = slf.get();
            if me.sel.borrow(py).conn_lost > 0 {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[pymethods]
impl RingStreamCore {
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
        Ok(RingStreamCore {
            link: LinkCell::new(fd, lp, protocol, transport),
            sel: GilCell::new(SelState::new(sock, server)),
            st: GilCell::new(St {
                buffered,
                protocol_connected: true,
                flow: Flow::default(),
                buf: WriteBuf::default(),
                eof: false,
                empty_waiter: None,
                read_op: None,
                read_size: FIRST_READ,
                read_result: None,
                read_queued: false,
                spare_read: None,
                write_op: None,
                in_flight: 0,
                write_result: None,
                spare_write: None,
                read_handle: None,
                write_handle: None,
            }),
        })
    }

    /// Schedule `connection_made`, the start of reading and the waiter, in
    /// that order, as asyncio's transport constructor does.
    #[pyo3(signature = (waiter = None))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let Some(lp) = me.link.lp(py) else {
            return Ok(());
        };
        let handle = |name: &Bound<'_, pyo3::types::PyString>| -> PyResult<Py<Handle>> {
            Py::new(
                py,
                Handle::new(
                    py,
                    slf.getattr(name)?.unbind(),
                    PyTuple::empty(py).unbind(),
                    None,
                    lp.clone().unbind(),
                    None,
                    None,
                )?,
            )
        };
        let rh = handle(pyo3::intern!(py, "_read_done"))?;
        let wh = handle(pyo3::intern!(py, "_write_done"))?;
        {
            let mut st = me.st.borrow_mut(py);
            st.read_handle = Some(rh);
            st.write_handle = Some(wh);
        }
        let start = slf.getattr(pyo3::intern!(py, "_add_reader_cb"))?;
        me.link.start(py, Some(start), waiter)
    }

    fn _add_reader_cb(slf: &Bound<'_, Self>) -> PyResult<()> {
        sel::start_reading(slf)
    }

    /// A recv finished: hand its bytes to the protocol, read on.
    fn _read_done(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let (result, buf, buffered) = {
            let mut st = me.st.borrow_mut(py);
            st.read_queued = false;
            if me.sel.borrow(py).conn_lost > 0 {
                st.read_result = None;
                return Ok(());
            }
            if !sel::is_reading(me, py) {
                // Paused (the bytes wait) or closing (they are dropped).
                if me.sel.borrow(py).closing {
                    st.read_result = None;
                }
                return Ok(());
            }
            let Some((result, buf)) = st.read_result.take() else {
                return Ok(());
            };
            (result, buf, st.buffered)
        };
        let Some(protocol) = me.link.protocol(py) else {
            return Ok(());
        };
        let protocol = protocol.into_bound(py);
        let n = match result {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                me.st.borrow_mut(py).spare_read = Some(buf);
                return Self::submit_recv(slf);
            }
            Err(e) => return sel::fatal_error(slf, io_err(e), READ_FAILED),
        };
        if n == 0 {
            return Self::on_eof(slf, &protocol);
        }
        {
            let mut st = me.st.borrow_mut(py);
            if n == buf.len() && st.read_size < MAX_READ {
                st.read_size = (st.read_size * 2).min(MAX_READ);
            }
        }
        if buffered {
            Self::feed_buffered(slf, &protocol, &buf[..n])?;
            me.st.borrow_mut(py).spare_read = Some(buf);
        } else {
            let data = PyBytes::new(py, &buf[..n]);
            me.st.borrow_mut(py).spare_read = Some(buf);
            // The next recv goes out with this pass's enter, whatever the
            // protocol does (pausing leaves it in flight; closing cancels it).
            Self::submit_recv(slf)?;
            let res = protocol.call_method1(pyo3::intern!(py, "data_received"), (data,));
            return Self::after_callback(
                slf,
                res,
                "Fatal error: protocol.data_received() call failed.",
            );
        }
        if sel::is_reading(me, py) && me.sel.borrow(py).conn_lost == 0 {
            Self::submit_recv(slf)?;
        }
        Ok(())
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        check_bytes_like(data)?;
        let (conn_lost, sending) = {
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
            (me.sel.borrow(py).conn_lost, st.write_op.is_some())
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
        if !sending && bytes.len() >= DIRECT_SEND_AT {
            // A large write is offered to the socket at once, from the
            // caller's buffer: no copy of what the kernel takes, and the
            // same buffer sizes the selector loop shows.
            match send_now(me.link.fd(py), bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => rest = &bytes[n..],
                Err(e) if would_block(&e) => {}
                Err(e) => return sel::fatal_error(slf, io_err(e), WRITE_FAILED),
            }
        }
        if sending {
            me.st.borrow_mut(py).buf.push(rest);
        } else {
            Self::submit_send(slf, rest)?;
        }
        let pause = {
            let size = me.buffer_size(py);
            me.st.borrow_mut(py).flow.should_pause(size)
        };
        if pause {
            me.link.flow_callback(py, "pause_writing")?;
        }
        Ok(())
    }

    /// `writelines`: the buffers joined, then one `write`.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let joined = PyBytes::new(slf.py(), b"").call_method1("join", (list_of_data,))?;
        Self::write(slf, &joined)
    }

    /// A send finished: send what accumulated, tell the protocol, finish
    /// closing or EOF once everything is out.
    fn _write_done(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let Some(result) = me.st.borrow_mut(py).write_result.take() else {
            return Ok(());
        };
        if me.sel.borrow(py).conn_lost > 0 {
            return Ok(());
        }
        if let Err(e) = result {
            {
                let mut st = me.st.borrow_mut(py);
                st.buf.clear();
                st.in_flight = 0;
            }
            let err = io_err(e);
            let exc = err.value(py).clone().into_any();
            sel::fatal_error(slf, err, WRITE_FAILED)?;
            if let Some(w) = me.empty_waiter_ref(py) {
                set_future(py, &w, Some(&exc))?;
            }
            return Ok(());
        }
        let more = {
            let mut st = me.st.borrow_mut(py);
            st.in_flight = 0;
            !st.buf.is_empty()
        };
        if more {
            Self::submit_send(slf, &[])?;
        }
        let resume = {
            let size = me.buffer_size(py);
            me.st.borrow_mut(py).flow.should_resume(size)
        };
        if resume {
            me.link.flow_callback(py, "resume_writing")?; // may write more
        }
        let (empty, closing, eof) = {
            let st = me.st.borrow(py);
            (
                st.in_flight == 0 && st.buf.is_empty(),
                me.sel.borrow(py).closing,
                st.eof,
            )
        };
        if !empty {
            return Ok(());
        }
        if let Some(w) = me.empty_waiter_ref(py) {
            set_future(py, &w, None)?;
        }
        if closing {
            Self::_call_connection_lost(slf, py.None().into_bound(py))
        } else if eof {
            shutdown_wr(me.link.fd(py))
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
            st.in_flight == 0 && st.buf.is_empty()
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
        let res = sel::connection_lost(me, py, &exc, connected);
        // Completions still to come find no handle: nothing more runs.
        let handles = {
            let mut st = me.st.borrow_mut(py);
            st.read_result = None;
            (st.read_handle.take(), st.write_handle.take())
        };
        drop(handles);
        res?;
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
        self.buffer_size(py)
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
        let pause = {
            let size = self.buffer_size(py);
            self.st.borrow_mut(py).flow.should_pause(size)
        };
        if pause {
            self.link.flow_callback(py, "pause_writing")?;
        }
        Ok(())
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
            st.in_flight == 0 && st.buf.is_empty()
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

    /// What the repr shows, as the selector transport's watch mask would:
    /// (reading and not paused, a send in flight).
    #[getter]
    fn io_state(&self, py: Python<'_>) -> (bool, bool) {
        let live = self.sel.borrow(py).conn_lost == 0;
        let reading = live && sel::is_reading(self, py);
        (reading, live && self.st.borrow(py).write_op.is_some())
    }

    /// Close the socket without telling the protocol (the `__del__` path).
    fn _close_sock(&self, py: Python<'_>) -> PyResult<()> {
        let sock = self.take_sock(py);
        crate::link::close_object(py, sock)
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.link.traverse(&visit)?;
        sel::traverse(&self.sel, &visit)?;
        if let Some(st) = self.st.gc_borrow() {
            visit.call(&st.empty_waiter)?;
            visit.call(&st.read_handle)?;
            visit.call(&st.write_handle)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.link.clear();
        sel::clear(&self.sel);
        let taken = self.st.gc_borrow_mut().map(|mut st| {
            (
                st.empty_waiter.take(),
                st.read_handle.take(),
                st.write_handle.take(),
            )
        });
        drop(taken);
    }
}

impl RingStreamCore {
    fn empty_waiter_ref(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .borrow(py)
            .empty_waiter
            .as_ref()
            .map(|w| w.clone_ref(py))
    }
}
