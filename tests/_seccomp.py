"""Block io_uring in the current process with a seccomp-BPF filter (ctypes only).

Container runtimes' default seccomp profiles (Docker, containerd, Podman) make
``io_uring_setup``/``io_uring_enter``/``io_uring_register`` fail, so an event
loop must cope with io_uring being *genuinely* unavailable.  This module
reproduces that in a child process:

* ``block_io_uring(errno_value)`` installs, in the calling process, a filter
  that makes the three io_uring system calls fail with ``errno_value`` and
  allows every other system call.  A seccomp filter can never be removed, so
  call it only in a throw-away child, never in the test process itself.
* ``run_blocked(code, errno_value)`` runs ``code`` in a fresh
  ``sys.executable -c`` child that calls ``block_io_uring`` first.
* ``io_uring_setup_errno()`` probes io_uring in the current process.
* ``fail_sends(fd, errno_value, length=None)`` installs a filter that makes
  ``sendto``/``sendmsg``/``sendmmsg`` on one descriptor number fail with
  ``errno_value`` (only ``sendto`` calls of one length, if ``length`` is
  given), to inject send errors such as ``ENOBUFS`` that loopback never
  produces on demand.  Same rule: throw-away children only.

The BPF ABI used here is the kernel's documented one: seccomp(2),
<linux/seccomp.h>, <linux/filter.h>, <linux/bpf_common.h>, <linux/audit.h>.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import subprocess
import sys
import textwrap

__all__ = [
    "IO_URING_SYSCALLS",
    "block_io_uring",
    "fail_sends",
    "io_uring_setup_errno",
    "run_blocked",
    "syscall_errno",
]

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# --- system call numbers -------------------------------------------------------
# io_uring_setup / io_uring_enter / io_uring_register are 425 / 426 / 427 in the
# x86_64 table and in the generic table aarch64 uses.  seccomp(2) itself is not
# one of the unified numbers.

_MACHINES = {
    # machine: (AUDIT_ARCH_*, __NR_seccomp, x32 syscall bit or 0)
    # AUDIT_ARCH_X86_64 = EM_X86_64 (62) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    "x86_64": (0xC000003E, 317, 0x40000000),
    # AUDIT_ARCH_AARCH64 = EM_AARCH64 (183) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    "aarch64": (0xC00000B7, 277, 0),
}
_MACHINES["amd64"] = _MACHINES["x86_64"]
_MACHINES["arm64"] = _MACHINES["aarch64"]

NR_IO_URING_SETUP = 425
NR_IO_URING_ENTER = 426
NR_IO_URING_REGISTER = 427
IO_URING_SYSCALLS = (NR_IO_URING_SETUP, NR_IO_URING_ENTER, NR_IO_URING_REGISTER)

# sizeof(struct io_uring_params) in <linux/io_uring.h>
IO_URING_PARAMS_SIZE = 120

# --- prctl(2) / seccomp(2) constants -------------------------------------------
PR_SET_SECCOMP = 22  # <linux/prctl.h>
PR_SET_NO_NEW_PRIVS = 38  # <linux/prctl.h>
SECCOMP_MODE_FILTER = 2  # prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)
SECCOMP_SET_MODE_FILTER = 1  # seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog)
SECCOMP_FILTER_FLAG_TSYNC = 1  # apply the filter to every thread of the process

# Filter return values (<linux/seccomp.h>); the low 16 bits are SECCOMP_RET_DATA,
# which for SECCOMP_RET_ERRNO is the errno the system call fails with.
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
MAX_ERRNO = 4095  # the kernel clamps larger SECCOMP_RET_ERRNO data to this

# --- classic BPF opcodes (<linux/bpf_common.h>) --------------------------------
BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06  # instruction class
BPF_W = 0x00  # ld size: 32-bit word
BPF_ABS = 0x20  # ld mode: absolute offset into the seccomp_data
BPF_AND = 0x50  # alu op
BPF_JEQ = 0x10  # jmp op
BPF_K = 0x00  # operand: the constant k

# --- struct seccomp_data (<linux/seccomp.h>) -----------------------------------
# struct seccomp_data {
#     int   nr;                    /* offset 0: system call number */
#     __u32 arch;                  /* offset 4: AUDIT_ARCH_* */
#     __u64 instruction_pointer;   /* offset 8 */
#     __u64 args[6];               /* offset 16 */
# };
SECCOMP_DATA_NR_OFFSET = 0
SECCOMP_DATA_ARCH_OFFSET = 4
SECCOMP_DATA_ARGS_OFFSET = 16  # args[i] at 16 + 8 * i

# (sendto, sendmsg, sendmmsg) per machine: the x86_64 table and the generic
# table aarch64 uses.
_SEND_SYSCALLS = {"x86_64": (44, 46, 307), "aarch64": (206, 211, 269)}
_SEND_SYSCALLS["amd64"] = _SEND_SYSCALLS["x86_64"]
_SEND_SYSCALLS["arm64"] = _SEND_SYSCALLS["aarch64"]


class sock_filter(ctypes.Structure):
    """struct sock_filter (<linux/filter.h>): one classic BPF instruction."""

    _fields_ = [
        ("code", ctypes.c_uint16),  # opcode
        ("jt", ctypes.c_uint8),  # jump offset if true (from the next insn)
        ("jf", ctypes.c_uint8),  # jump offset if false
        ("k", ctypes.c_uint32),  # generic field: constant, offset, ...
    ]


class sock_fprog(ctypes.Structure):
    """struct sock_fprog (<linux/filter.h>): the program handed to the kernel."""

    _fields_ = [
        ("len", ctypes.c_ushort),  # number of instructions
        ("filter", ctypes.POINTER(sock_filter)),
    ]


def _stmt(code: int, k: int) -> sock_filter:
    """BPF_STMT(code, k)"""
    return sock_filter(code, 0, 0, k)


def _jump(code: int, k: int, jt: int, jf: int) -> sock_filter:
    """BPF_JUMP(code, k, jt, jf)"""
    return sock_filter(code, jt, jf, k)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


def _machine() -> tuple[int, int, int]:
    machine = platform.machine().lower()
    try:
        return _MACHINES[machine]
    except KeyError:
        raise NotImplementedError(f"no seccomp filter for machine {machine!r}") from None


def _filter_program(errno_value: int) -> list[sock_filter]:
    """The BPF program: ERRNO(errno_value) for io_uring, ALLOW for the rest."""
    audit_arch, _nr_seccomp, x32_bit = _machine()
    ld_w_abs = BPF_LD | BPF_W | BPF_ABS
    jeq_k = BPF_JMP | BPF_JEQ | BPF_K
    ret_k = BPF_RET | BPF_K
    prog = [
        # A = seccomp_data.arch.  System call numbers are only meaningful for
        # one ABI; a call made through another (e.g. int 0x80 on x86_64) kills
        # the process rather than slipping past the filter, as seccomp(2)
        # recommends.
        _stmt(ld_w_abs, SECCOMP_DATA_ARCH_OFFSET),
        _jump(jeq_k, audit_arch, 1, 0),
        _stmt(ret_k, SECCOMP_RET_KILL_PROCESS),
        # A = seccomp_data.nr
        _stmt(ld_w_abs, SECCOMP_DATA_NR_OFFSET),
    ]
    if x32_bit:
        # x32 system calls share AUDIT_ARCH_X86_64 and set __X32_SYSCALL_BIT in
        # nr (io_uring_setup is 0x40000000 | 425 there); clear it so they are
        # blocked as well.  Native numbers never have that bit set.
        prog.append(_stmt(BPF_ALU | BPF_AND | BPF_K, 0xFFFFFFFF & ~x32_bit))
    n = len(IO_URING_SYSCALLS)
    for i, nr in enumerate(IO_URING_SYSCALLS):
        # On a match skip the remaining compares and the ALLOW: land on ERRNO.
        prog.append(_jump(jeq_k, nr, n - i, 0))
    prog += [
        _stmt(ret_k, SECCOMP_RET_ALLOW),
        _stmt(ret_k, SECCOMP_RET_ERRNO | errno_value),
    ]
    return prog


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def block_io_uring(errno_value: int) -> None:
    """Make io_uring_setup/enter/register fail with ``errno_value`` from now on.

    Applies to every thread of the calling process and to everything it later
    creates (threads, fork, exec); it cannot be undone.  Raises ``OSError`` if
    the kernel refuses the filter.
    """
    if not isinstance(errno_value, int) or not 1 <= errno_value <= MAX_ERRNO:
        raise ValueError(f"errno_value must be an int in 1..{MAX_ERRNO}, not {errno_value!r}")
    _install(_filter_program(errno_value))


def _install(insns: list[sock_filter]) -> None:
    """Install the BPF program ``insns`` as a seccomp filter on every thread."""
    _audit_arch, nr_seccomp, _x32_bit = _machine()
    array = (sock_filter * len(insns))(*insns)
    prog = sock_fprog(len(insns), ctypes.cast(array, ctypes.POINTER(sock_filter)))

    # Without CAP_SYS_ADMIN a filter may only be installed once the process has
    # promised never to gain privileges (e.g. through set-uid executables).
    ulong = ctypes.c_ulong
    if _libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), ulong(1), ulong(0), ulong(0), ulong(0)):
        _raise_errno("prctl(PR_SET_NO_NEW_PRIVS)")

    # seccomp(2) with TSYNC also filters threads that already exist (the
    # interpreter or an imported library may have started some); prctl would
    # filter only the calling thread.
    ret = _libc.syscall(
        ctypes.c_long(nr_seccomp),
        ulong(SECCOMP_SET_MODE_FILTER),
        ulong(SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(prog),
    )
    if ret == 0:
        return
    if ret > 0:
        # TSYNC failure: ret is the id of a thread that could not be synchronised.
        raise OSError(
            errno.EAGAIN, f"seccomp(SECCOMP_FILTER_FLAG_TSYNC): thread {ret} not filtered"
        )
    if ctypes.get_errno() != errno.ENOSYS:
        _raise_errno("seccomp(SECCOMP_SET_MODE_FILTER)")
    # seccomp(2) itself unavailable (pre-3.17 kernel): prctl, calling thread only.
    if _libc.prctl(
        ctypes.c_int(PR_SET_SECCOMP),
        ulong(SECCOMP_MODE_FILTER),
        ctypes.byref(prog),
        ulong(0),
        ulong(0),
    ):
        _raise_errno("prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)")


def syscall_errno(nr: int, *args: object) -> int | None:
    """Call system call ``nr``; the errno it failed with, or None on success.

    Integer arguments are passed as C longs, anything else (a ctypes buffer or
    object) as is.  The file descriptor a successful io_uring_setup returns is
    closed.
    """
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(nr), *cargs)
    if ret < 0:
        return ctypes.get_errno()
    if nr == NR_IO_URING_SETUP:
        os.close(ret)
    return None


def io_uring_setup_errno() -> int | None:
    """io_uring_setup(1, &params) here: None if it works, else its errno."""
    params = ctypes.create_string_buffer(IO_URING_PARAMS_SIZE)  # zero-filled
    return syscall_errno(NR_IO_URING_SETUP, 1, params)


def _arg_word(i: int, high: bool) -> int:
    """Offset of the low or high 32 bits of seccomp_data.args[i]; both
    supported machines are little-endian."""
    return SECCOMP_DATA_ARGS_OFFSET + 8 * i + (4 if high else 0)


def _fail_sends_program(fd: int, errno_value: int, length: int | None) -> list[sock_filter]:
    """ERRNO(errno_value) for sendto(fd, ..., length, ...) (any length if
    ``length`` is None) and, if ``length`` is None, for sendmsg(fd, ...) and
    sendmmsg(fd, ...); ALLOW for everything else."""
    audit_arch, _nr_seccomp, x32_bit = _machine()
    nr_sendto, nr_sendmsg, nr_sendmmsg = _SEND_SYSCALLS[platform.machine().lower()]
    ld_w_abs = BPF_LD | BPF_W | BPF_ABS
    jeq_k = BPF_JMP | BPF_JEQ | BPF_K
    ret_k = BPF_RET | BPF_K
    # (instruction, label if true, label if false): jumps are resolved below.
    code: list[tuple[sock_filter, str | None, str | None]] = []
    labels: dict[str, int] = {}

    def emit(insn, jt=None, jf=None):
        code.append((insn, jt, jf))

    def label(name):
        labels[name] = len(code)

    def jeq(k, jt=None, jf=None):
        emit(_jump(jeq_k, k, 0, 0), jt, jf)

    emit(_stmt(ld_w_abs, SECCOMP_DATA_ARCH_OFFSET))
    jeq(audit_arch, None, "kill")
    emit(_stmt(ld_w_abs, SECCOMP_DATA_NR_OFFSET))
    if x32_bit:
        emit(_stmt(BPF_ALU | BPF_AND | BPF_K, 0xFFFFFFFF & ~x32_bit))
    if length is None:
        jeq(nr_sendmsg, "check_fd")
        jeq(nr_sendmmsg, "check_fd")
    jeq(nr_sendto, None, "allow")
    if length is not None:
        # size_t len is sendto's third argument.
        emit(_stmt(ld_w_abs, _arg_word(2, False)))
        jeq(length & 0xFFFFFFFF, None, "allow")
        emit(_stmt(ld_w_abs, _arg_word(2, True)))
        jeq(length >> 32, None, "allow")
    label("check_fd")
    # int fd, the first argument, sign-extended to 64 bits by the C library.
    emit(_stmt(ld_w_abs, _arg_word(0, False)))
    jeq(fd, None, "allow")
    emit(_stmt(ld_w_abs, _arg_word(0, True)))
    jeq(0, "fail", "allow")
    label("kill")
    emit(_stmt(ret_k, SECCOMP_RET_KILL_PROCESS))
    label("allow")
    emit(_stmt(ret_k, SECCOMP_RET_ALLOW))
    label("fail")
    emit(_stmt(ret_k, SECCOMP_RET_ERRNO | errno_value))

    prog = []
    for i, (insn, jt, jf) in enumerate(code):
        # Jump offsets count from the next instruction; None falls through.
        if jt is not None:
            insn.jt = labels[jt] - i - 1
        if jf is not None:
            insn.jf = labels[jf] - i - 1
        prog.append(insn)
    return prog


def fail_sends(fd: int, errno_value: int, length: int | None = None) -> None:
    """Make sends on descriptor number ``fd`` fail with ``errno_value`` from now on.

    With ``length`` None: every ``sendto``, ``sendmsg`` and ``sendmmsg`` on
    ``fd`` (``send`` is ``sendto`` in the kernel's table).  With ``length``:
    only ``sendto`` calls of exactly ``length`` bytes, so other sends on the
    same socket still go through.  Every other system call, and sends on
    other descriptors, are allowed.  Irreversible, process-wide: call it only
    in a throw-away child.
    """
    if not isinstance(errno_value, int) or not 1 <= errno_value <= MAX_ERRNO:
        raise ValueError(f"errno_value must be an int in 1..{MAX_ERRNO}, not {errno_value!r}")
    if not isinstance(fd, int) or not 0 <= fd < 1 << 31:
        raise ValueError(f"fd must be a descriptor number, not {fd!r}")
    if length is not None and (not isinstance(length, int) or not 0 <= length < 1 << 64):
        raise ValueError(f"length must be None or a size_t, not {length!r}")
    _install(_fail_sends_program(fd, errno_value, length))


def run_blocked(code: str, errno_value: int, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in ``sys.executable -c`` with io_uring blocked (``errno_value``).

    The child's sys.path starts with the tests directory, so ``code`` can import
    test helpers (including this module).  stdout/stderr are captured as text;
    the environment is inherited.  ``subprocess.TimeoutExpired`` is raised (and
    the child killed) after ``timeout`` seconds.
    """
    # One line, so the child's tracebacks are off by one line only.
    prelude = (
        f"import sys; sys.path.insert(0, {TESTS_DIR!r}); "
        f"import _seccomp; _seccomp.block_io_uring({int(errno_value)!r}); del _seccomp\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
