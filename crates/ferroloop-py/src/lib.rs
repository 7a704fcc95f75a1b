//! `ferroloop._ferroloop`: the native half of the ferroloop Python package.
//!
//! `LoopCore` holds the loop's queues, selector and waker and runs its
//! passes; `Handle` and `TimerHandle` are what the scheduling methods return.
//! The public classes live in the Python package `ferroloop`.

mod cell;
mod errors;
mod handle;
mod link;
mod loop_core;
mod proactor;
mod selector;
mod stream_half;

use selector::{datagram, pipe, stream};

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// What a ring made here gets from the kernel (`python -m ferroloop
/// --info`): a dict, or the `OSError` a `ProactorEventLoop()` would raise.
#[pyfunction]
fn _ring_features(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let f = ferroloop_core::proactor::probe().map_err(errors::unavailable_err)?;
    let d = PyDict::new(py);
    d.set_item("setup_flags", f.setup_flags.clone())?;
    d.set_item("recv_multishot", f.recv_multishot)?;
    d.set_item("accept_multishot", f.accept_multishot)?;
    d.set_item("recv_poll_first", f.recv_poll_first)?;
    Ok(d)
}

#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<loop_core::LoopCore>()?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<handle::TimerHandle>()?;
    m.add_class::<stream::StreamCore>()?;
    m.add_class::<proactor::stream::RingStreamCore>()?;
    m.add_class::<datagram::DatagramCore>()?;
    m.add_class::<pipe::ReadPipeCore>()?;
    m.add_class::<pipe::WritePipeCore>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(_ring_features, m)?)?;
    Ok(())
}
