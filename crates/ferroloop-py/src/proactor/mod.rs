//! The proactor engine's transports: their I/O halves are ring ops
//! (completion-based), over the same protocol-facing half as the selector
//! transports (`crate::link`, `ferroloop_core::transport`) and the same
//! `_SelectorTransport` rules (`crate::selector::sel`).
//!
//! * `stream`: TCP and Unix stream sockets, reading with a recv op always
//!   in flight and writing with send ops, all handed to the kernel with the
//!   loop's one `io_uring_enter` per pass.
//!
//! Datagram and pipe transports, `sock_*`, accepting and `add_reader` run on
//! the ring's one-shot poll ops (try the system call, wait with a poll that
//! loses nothing when cancelled), through the loop's fd watching.

pub mod stream;

use ferroloop_core::proactor::{Completion, LentBuf};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::handle::Handle;

/// Who a ring op's completion goes to.
pub enum Owner {
    /// A stream transport's recv.
    Read(Py<stream::RingStreamCore>),
    /// A stream transport's send.
    Write(Py<stream::RingStreamCore>),
    /// Nobody waits (a close handed to the ring).
    Nobody,
}

impl Owner {
    /// Hand a completion to its owner (no Python code runs); the handle to
    /// queue, if the owner wants to be called in this pass.
    pub fn deliver(py: Python<'_>, c: Completion<Owner>) -> Option<Py<Handle>> {
        let buffer = c.buffer();
        let Completion {
            owner, result, op, ..
        } = c;
        match owner {
            Owner::Read(t) => t.get().read_completed(py, result, op, buffer),
            Owner::Write(t) => t.get().write_completed(py, result, op),
            Owner::Nobody => None,
        }
    }
}

/// A `bytes` object lent to a send op: it cannot change, so the kernel
/// reads it where it is, with no copy.
#[derive(Debug)]
pub struct LentBytes {
    /// Held, never read: it keeps the memory alive.
    _obj: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

impl LentBytes {
    pub fn new(b: &Bound<'_, PyBytes>) -> Self {
        let s = b.as_bytes();
        LentBytes {
            ptr: s.as_ptr(),
            len: s.len(),
            _obj: b.clone().unbind(),
        }
    }
}

// SAFETY: `ptr` points into the bytes object `_obj` keeps alive; a Py may
// be dropped on any thread (pyo3 defers the decref to a thread holding the
// GIL).
unsafe impl Send for LentBytes {}

// SAFETY: a bytes object's contents never move or change while it lives,
// and `_obj` keeps it alive as long as this value.
unsafe impl LentBuf for LentBytes {
    fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}
