//! Integration tests of the Rust [`EventLoop`](ferroloop_core::EventLoop) on
//! each selector backend (epoll, poll, select), with the monotonic clock.
//! The scenarios live in tests/common (shared with tests/proactor_loop.rs);
//! `per_backend!` below instantiates each as `epoll::<name>`, `poll::<name>`
//! and `select::<name>`.

#[macro_use]
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

with_scenarios!(per_backend);
