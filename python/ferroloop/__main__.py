"""Run an unmodified asyncio program on ferroloop.

    python -m ferroloop [--loop KIND] [--selector NAME] script.py [args...]
    python -m ferroloop [--loop KIND] [--selector NAME] -m package.module [args...]

ferroloop's policy is installed first, so ``asyncio.run()``,
``asyncio.new_event_loop()`` and ``asyncio.get_event_loop()`` in the program
make ferroloop loops. ``--loop`` picks their kind: ``selector`` (epoll),
``proactor`` (io_uring) or ``auto`` (the proactor where io_uring works, else
the selector loop); it sets ``FERROLOOP_LOOP``, as ``--selector`` (``epoll``,
``poll``, ``select``) sets ``FERROLOOP_SELECTOR``. The program sees
``sys.argv`` as it would if started directly.
"""

from __future__ import annotations

import os
import runpy
import sys

import ferroloop

USAGE = (
    "usage: python -m ferroloop [--loop selector|proactor|auto] "
    "[--selector epoll|poll|select] (script.py | -m module) [args...]"
)

_OPTIONS = {
    "--loop": ("FERROLOOP_LOOP", ("selector", "proactor", "auto")),
    "--selector": ("FERROLOOP_SELECTOR", ("epoll", "poll", "select")),
}


def _fail(message: str) -> int:
    print(f"{message}\n{USAGE}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    argv = list(argv)
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
