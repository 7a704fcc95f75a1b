//! Making a ring: setup flags tried from the best down, the opcodes the
//! driver needs probed, and a clear error when io_uring cannot be used.

use std::fmt;
use std::io;

use io_uring::{opcode, IoUring, Probe};

/// What the kernel gave the ring.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// The setup flags the ring was made with, by name.
    pub setup_flags: Vec<&'static str>,
    /// Multishot accept (`IORING_ACCEPT_MULTISHOT`, Linux 5.19).
    pub accept_multishot: bool,
    /// Receives may ask to wait for readiness before their first attempt
    /// (`IORING_RECVSEND_POLL_FIRST`, Linux 5.19).
    pub recv_poll_first: bool,
    /// Multishot recv into provided-buffer rings (`IORING_RECV_MULTISHOT`,
    /// Linux 6.0; buffer rings came with 5.19).
    pub recv_multishot: bool,
    /// Completions are never dropped on overflow (`IORING_FEAT_NODROP`).
    pub nodrop: bool,
    /// Submission and completion rings in one mapping.
    pub single_mmap: bool,
    /// Sizes of the submission and completion rings.
    pub sq_entries: u32,
    pub cq_entries: u32,
}

/// Why io_uring cannot be used here.
#[derive(Debug)]
pub struct Unavailable {
    /// The system error behind it.
    pub error: io::Error,
    /// What it means, in words.
    pub reason: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "io_uring is unavailable: {}", self.reason)
    }
}

impl std::error::Error for Unavailable {}

impl From<Unavailable> for io::Error {
    fn from(u: Unavailable) -> io::Error {
        io::Error::new(u.error.kind(), u.to_string())
    }
}

fn errno_name(code: i32) -> &'static str {
    match code {
        libc::ENOSYS => "ENOSYS",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOMEM => "ENOMEM",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        _ => "error",
    }
}

fn disabled_sysctl() -> Option<String> {
    let v = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()?;
    let v = v.trim().to_owned();
    (v != "0").then_some(v)
}

fn explain(error: io::Error, during: &str) -> Unavailable {
    let code = error.raw_os_error().unwrap_or(0);
    let why = match code {
        libc::ENOSYS => {
            "the system call is not implemented: blocked by a seccomp filter \
                         (as container runtimes' default profiles do) or not built into this kernel"
                .to_owned()
        }
        libc::EPERM | libc::EACCES => match disabled_sysctl() {
            Some(v) => format!("disabled by the kernel.io_uring_disabled sysctl (= {v})"),
            None => "not permitted: blocked by a seccomp filter or a security policy".to_owned(),
        },
        libc::EINVAL => "the kernel is too old for the ring the driver needs".to_owned(),
        libc::ENOMEM => "not enough lockable memory for the ring (see ulimit -l)".to_owned(),
        _ => "the kernel refused it".to_owned(),
    };
    Unavailable {
        reason: format!("{during} failed with {} ({error}): {why}", errno_name(code)),
        error,
    }
}

/// The opcodes the driver uses; a kernel without one of them is too old.
const NEEDED: &[(u8, &str)] = &[
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::PollRemove::CODE, "POLL_REMOVE"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Connect::CODE, "CONNECT"),
    (opcode::Close::CODE, "CLOSE"),
];

/// Make a ring of `entries` submissions, with the best setup flags the
/// kernel accepts, not inherited across fork.
pub(super) fn build(entries: u32) -> Result<(IoUring, Features), Unavailable> {
    // Tried in order; EINVAL means the kernel lacks a flag, so fewer next.
    // SINGLE_ISSUER and DEFER_TASKRUN are left out on purpose: Python code
    // often makes a loop in one thread and runs it in another (and may run
    // it from several in turn), which those flags forbid.
    type Flags = &'static [&'static str];
    let attempts: [Flags; 3] = [
        &["SUBMIT_ALL", "COOP_TASKRUN", "TASKRUN_FLAG"],
        &["SUBMIT_ALL"],
        &[],
    ];
    let mut last = None;
    for flags in attempts {
        let mut b = IoUring::builder();
        // The completion ring gets the kernel's default size, two entries
        // per submission entry. Its pages are resident once the loop has
        // gone round it, so a larger one costs memory on every loop (8
        // entries per submission entry cost 96 KiB more at 1,024); a pass
        // with more completions than fit finds the rest in the kernel's
        // overflow list, flushed by the next enter (IORING_FEAT_NODROP,
        // Linux 5.5: every kernel `check` accepts has it).
        b.dontfork();
        for f in flags {
            match *f {
                "SUBMIT_ALL" => b.setup_submit_all(),
                "COOP_TASKRUN" => b.setup_coop_taskrun(),
                "TASKRUN_FLAG" => b.setup_taskrun_flag(),
                _ => unreachable!(),
            };
        }
        match b.build(entries) {
            Ok(ring) => {
                let features = check(&ring, flags)?;
                return Ok((ring, features));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(explain(e, "io_uring_setup")),
        }
    }
    Err(explain(
        last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)),
        "io_uring_setup",
    ))
}

fn check(ring: &IoUring, flags: &[&'static str]) -> Result<Features, Unavailable> {
    let p = ring.params();
    if !p.is_feature_ext_arg() {
        return Err(Unavailable {
            error: io::Error::from_raw_os_error(libc::EINVAL),
            reason: "the kernel lacks IORING_FEAT_EXT_ARG (timed waits, Linux 5.11)".to_owned(),
        });
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| explain(e, "IORING_REGISTER_PROBE"))?;
    for (code, name) in NEEDED {
        if !probe.is_supported(*code) {
            return Err(Unavailable {
                error: io::Error::from_raw_os_error(libc::EINVAL),
                reason: format!("the kernel lacks the {name} opcode"),
            });
        }
    }
    Ok(Features {
        setup_flags: flags.to_vec(),
        // Multishot accept came with the SOCKET opcode (Linux 5.19).
        accept_multishot: probe.is_supported(opcode::Socket::CODE),
        // So did IORING_RECVSEND_POLL_FIRST; an older kernel rejects any
        // ioprio on a recv with EINVAL, so it is only set where it is known.
        recv_poll_first: probe.is_supported(opcode::Socket::CODE),
        // No probe tells a flag of an opcode apart: an older kernel fails
        // the recv with EINVAL, so the release decides.
        recv_multishot: probe.is_supported(opcode::Socket::CODE) && kernel_at_least(6, 0),
        nodrop: p.is_feature_nodrop(),
        single_mmap: p.is_feature_single_mmap(),
        sq_entries: p.sq_entries(),
        cq_entries: p.cq_entries(),
    })
}

/// The running kernel's release is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: uname fills the struct we pass; all zeroes is a valid one.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return false;
    }
    // SAFETY: uname NUL-terminates `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

/// Whether a ring can be made here: its features, or why not.
pub fn probe() -> Result<Features, Unavailable> {
    build(8).map(|(_, f)| f)
}
