//! The selector engine's transports: their I/O halves work on readiness
//! (try the system call, wait for the descriptor on EAGAIN), over the
//! shared protocol-facing half in `crate::link` and
//! `ferroloop_core::transport`.
//!
//! * `sel`: asyncio's `_SelectorTransport` rules shared by the socket
//!   transports (pausing, closing, aborting, fatal errors);
//! * `stream`: TCP and Unix stream sockets;
//! * `datagram`: UDP and Unix datagram sockets;
//! * `pipe`: read and write pipes (also the pipes of subprocesses).
//!
//! The proactor loop uses the datagram and pipe transports as they are:
//! their readiness comes from the ring's poll operations there.

pub mod datagram;
pub mod pipe;
pub mod sel;
pub mod stream;
