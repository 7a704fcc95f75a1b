//! Integration tests of the Rust [`EventLoop`](ferroloop_core::EventLoop) on
//! each selector backend (epoll, poll, select), with the monotonic clock.
//! The scenarios live in tests/common (shared with tests/proactor_loop.rs);
//! `per_backend!` below instantiates each as `epoll::<name>`, `poll::<name>`
//! and `select::<name>`.

mod common;

use common::*;

// -------------------------------------------------------------- instantiate

macro_rules! per_backend {
    ($($test:ident),* $(,)?) => {
        mod epoll {
            $(#[test] fn $test() { super::$test(ferroloop_core::LoopKind::Selector(ferroloop_core::BackendKind::Epoll)); })*
        }
        mod poll {
            $(#[test] fn $test() { super::$test(ferroloop_core::LoopKind::Selector(ferroloop_core::BackendKind::Poll)); })*
        }
        mod select {
            $(#[test] fn $test() { super::$test(ferroloop_core::LoopKind::Selector(ferroloop_core::BackendKind::Select)); })*
        }
    };
}

per_backend!(
    reader_add_remove,
    writer_fires,
    reader_and_writer_on_one_fd,
    replacing_reader_cancels_previous,
    replacing_reader_during_pass,
    remove_reader_in_pending_pass,
    remove_writer_in_pending_pass_same_fd,
    add_reader_bad_fd,
    timer_ordering,
    cancel_timer,
    remote_from_threads,
    remote_wakes_blocked_loop,
);
