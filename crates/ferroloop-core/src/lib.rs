//! ferroloop-core: the parts of an asyncio-style event loop that need no Python.
//!
//! * [`clock`]: the monotonic clock (`CLOCK_MONOTONIC`, the clock behind
//!   Python's `time.monotonic()`), and a manual clock for tests.
//! * [`timers`]: the timer queue, ordered by (deadline, insertion order), with
//!   cheap cancellation and compaction of cancelled entries.
//! * [`scheduler`]: ready queue + timer queue + the rules of one loop pass,
//!   exactly as asyncio's `BaseEventLoop._run_once` applies them.
//! * [`selector`]: level-triggered readiness backends (epoll, poll, select)
//!   behind one enum-dispatched interface.
//! * [`transport`]: the write half every transport shares: the pending
//!   bytes and the high / low water marks, with asyncio's rules.
//! * [`waker`]: a cross-thread waker (eventfd).
//! * [`event_loop`]: a complete event loop for Rust programs, driven by
//!   closures, with a [`event_loop::Remote`] for other threads, waiting on
//!   a selector or on the io_uring [`proactor`] (completion ops with
//!   closures).
//! * [`policy`]: a thread-local default-loop policy mirroring asyncio's
//!   `get_event_loop` / `set_event_loop` / `new_event_loop`.
//!
//! The Python extension builds its loop from the same pieces: the scheduler is
//! generic over the callback type, so the Python layer stores its handles in it
//! directly.

pub mod clock;
pub mod event_loop;
pub mod net;
pub mod policy;
pub mod proactor;
pub mod scheduler;
pub mod selector;
pub mod timers;
pub mod transport;
pub mod waker;

pub use clock::{Clock, ManualClock, MonotonicClock, TickClock};
pub use event_loop::{EventLoop, LoopKind, Remote};
pub use scheduler::{Cancel, Scheduler, MAXIMUM_SELECT_TIMEOUT};
pub use selector::{BackendKind, Event, Interest, Selector};
pub use timers::TimerQueue;
pub use waker::Waker;
