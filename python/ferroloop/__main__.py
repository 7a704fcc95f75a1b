"""Run an unmodified asyncio program on ferroloop.

    python -m ferroloop [--loop KIND] [--selector NAME] script.py [args...]
    python -m ferroloop [--loop KIND] [--selector NAME] -m package.module [args...]
    python -m ferroloop --info

ferroloop's policy is installed first, so ``asyncio.run()``,
``asyncio.new_event_loop()`` and ``asyncio.get_event_loop()`` in the program
make ferroloop loops. ``--loop`` picks their kind: ``selector`` (epoll),
``proactor`` (io_uring) or ``auto`` (the proactor where io_uring works, else
the selector loop); it sets ``FERROLOOP_LOOP``, as ``--selector`` (``epoll``,
``poll``, ``select``) sets ``FERROLOOP_SELECTOR``. The program sees
``sys.argv`` as it would if started directly.

``--info`` prints what runs here: ferroloop's and Python's versions, the
kernel, each loop kind and selector backend with whether it can be used
and, where not, why (for example io_uring blocked by a seccomp filter).
"""

from __future__ import annotations

import os
import platform
import runpy
import sys

import ferroloop

USAGE = (
    "usage: python -m ferroloop [--loop selector|proactor|auto] "
    "[--selector epoll|poll|select] (script.py | -m module) [args...]\n"
    "       python -m ferroloop --info"
)

_OPTIONS = {
    "--loop": ("FERROLOOP_LOOP", ("selector", "proactor", "auto")),
    "--selector": ("FERROLOOP_SELECTOR", ("epoll", "poll", "select")),
}


def _fail(message: str) -> int:
    print(f"{message}\n{USAGE}", file=sys.stderr)
    return 2


def _try_loop(**kwargs) -> str | None:
    """None if a loop made with ``kwargs`` works here, else why not."""
    try:
        loop = ferroloop.new_event_loop(**kwargs)
    except (OSError, ValueError) as exc:
        return str(exc)
    try:
        loop.run_until_complete(_noop())
    finally:
        loop.close()
    return None


async def _noop() -> None:
    pass


def info() -> str:
    """The report ``--info`` prints."""
    from ferroloop import _ferroloop

    lines = [
        f"ferroloop {ferroloop.__version__}",
        f"Python {platform.python_version()} ({platform.python_implementation()}) at {sys.executable}",
        f"kernel {platform.system()} {platform.release()} {platform.machine()}",
        f"default kind: {ferroloop.DEFAULT_KIND}"
        + "".join(
            f"; {name}={os.environ[name]}"
            for name in ("FERROLOOP_LOOP", "FERROLOOP_SELECTOR", "FERROLOOP_RECV_MULTISHOT")
            if name in os.environ
        ),
        "loop kinds:",
    ]
    backends = {name: _try_loop(kind="selector", selector=name) for name in ("epoll", "poll", "select")}
    why = backends["epoll"]
    lines.append("  selector  " + ("available (epoll)" if why is None else f"unavailable: {why}"))
    why = ferroloop.proactor_unavailable_reason()
    if why is not None:
        lines.append(f"  proactor  unavailable: {why}")
    else:
        feats = _ferroloop._ring_features()
        yes = {True: "yes", False: "no"}
        flags = ", ".join(feats["setup_flags"]) or "none"
        lines.append(
            f"  proactor  available (io_uring; setup flags {flags}; "
            f"multishot recv {yes[feats['recv_multishot']]}, "
            f"multishot accept {yes[feats['accept_multishot']]}, "
            f"recv poll-first {yes[feats['recv_poll_first']]})"
        )
    lines.append("backends of the selector loop:")
    for name, why in backends.items():
        lines.append(f"  {name:<7} " + ("available" if why is None else f"unavailable: {why}"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    argv = list(argv)
    if argv[:1] == ["--info"]:
        if len(argv) > 1:
            return _fail("--info takes no other arguments")
        print(info())
        return 0
    while argv and argv[0] in _OPTIONS:
        option = argv.pop(0)
        variable, choices = _OPTIONS[option]
        if not argv or argv[0] not in choices:
            return _fail(f"{option} takes one of: {', '.join(choices)}")
        os.environ[variable] = argv.pop(0)
    if os.environ.get("FERROLOOP_SELECTOR") and os.environ.get("FERROLOOP_LOOP") == "proactor":
        return _fail("--selector applies to the selector loop, not --loop proactor")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    ferroloop.install()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        # As `python script.py` does: the script's directory comes first.
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
