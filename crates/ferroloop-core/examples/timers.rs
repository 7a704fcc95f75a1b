//! A Rust program on ferroloop-core: timers, a cancelled timer, a descriptor
//! watched for reading, and a message from another thread.
//!
//! Run with `cargo run -p ferroloop-core --example timers`.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use ferroloop_core::EventLoop;

fn main() -> std::io::Result<()> {
    let mut lp = EventLoop::new()?;
    println!("backend: {}", lp.backend().name());
    let start = lp.time();
    let log = Rc::new(RefCell::new(Vec::<String>::new()));

    for (delay, name) in [(0.03, "30 ms"), (0.01, "10 ms"), (0.02, "20 ms")] {
        let log = log.clone();
        lp.call_later(delay, move |lp| {
            log.borrow_mut().push(format!(
                "{name} timer at +{:.1} ms",
                (lp.time() - start) * 1e3
            ));
        });
    }
    let doomed = lp.call_later(0.015, |_| unreachable!("cancelled"));
    lp.cancel(&doomed);

    let (mut a, b) = UnixStream::pair()?;
    b.set_nonblocking(true)?;
    let fd = b.as_raw_fd();
    let reader_log = log.clone();
    let mut b = b;
    lp.add_reader(fd, move |lp| {
        let mut buf = [0u8; 64];
        let n = b.read(&mut buf).unwrap_or(0);
        reader_log
            .borrow_mut()
            .push(format!("read {:?}", String::from_utf8_lossy(&buf[..n])));
        lp.remove_reader(fd).expect("registered");
    })?;

    let remote = lp.remote();
    let writer = std::thread::spawn(move || {
        a.write_all(b"hello from a thread")
            .expect("socketpair write");
        remote.call_soon_threadsafe(|lp| {
            lp.call_later(0.05, |lp| lp.stop());
        });
    });

    lp.run_forever()?;
    writer.join().expect("writer thread");
    for line in log.borrow().iter() {
        println!("{line}");
    }
    Ok(())
}
