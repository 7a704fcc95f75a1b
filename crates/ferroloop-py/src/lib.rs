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
    Ok(())
}
