"""Async generator hooks and shutdown_asyncgens."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest
from conftest import run_bounded, run_coro


def test_shutdown_asyncgens_finalizes_pending_generators(loop):
    log = []

    async def agen(name):
        try:
            log.append(f"{name} started")
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)  # finalization may await
            log.append(f"{name} finalized")

    gens = []

    async def main():
        for name in ("a", "b"):
            g = agen(name)
            gens.append(g)
            assert await g.__anext__() == 1

    run_coro(loop, main())
    assert log == ["a started", "b started"]
    run_coro(loop, loop.shutdown_asyncgens())
    assert sorted(log[2:]) == ["a finalized", "b finalized"]


def test_shutdown_asyncgens_reports_errors(loop):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))

    async def agen():
        try:
            yield 1
        finally:
            raise ValueError("in aclose")

    holder = []

    async def main():
        g = agen()
        holder.append(g)
        await g.__anext__()

    run_coro(loop, main())
    run_coro(loop, loop.shutdown_asyncgens())
    assert len(seen) == 1
    assert isinstance(seen[0]["exception"], ValueError)
    assert seen[0]["message"].startswith(
        "an error occurred during closing of asynchronous generator"
    )


def test_asyncgen_collected_while_running_is_finalized_on_the_loop(loop):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append(("finalized", asyncio.get_running_loop() is loop))

    async def main():
        g = agen()
        await g.__anext__()
        del g
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    run_coro(loop, main())
    assert log == [("finalized", True)]


def test_asyncgen_hooks_installed_while_running_and_restored(loop):
    def firstiter(agen):
        pass

    def finalizer(agen):
        pass

    saved = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)
    try:
        inside = []

        async def main():
            inside.append(sys.get_asyncgen_hooks())

        run_coro(loop, main())
        hooks = inside[0]
        assert hooks.firstiter == loop._asyncgen_firstiter_hook
        assert hooks.finalizer == loop._asyncgen_finalizer_hook
        assert sys.get_asyncgen_hooks() == (firstiter, finalizer)

        # Restored also when the loop stops with an exception.
        def boom():
            raise KeyboardInterrupt

        loop.call_soon(boom)
        with pytest.raises(KeyboardInterrupt):
            run_bounded(loop)
        assert sys.get_asyncgen_hooks() == (firstiter, finalizer)
    finally:
        sys.set_asyncgen_hooks(*saved)


def test_asyncgen_first_iterated_after_shutdown_warns(loop):
    async def agen():
        yield 1

    async def main():
        await loop.shutdown_asyncgens()
        g = agen()
        with pytest.warns(ResourceWarning, match="was scheduled after loop.shutdown_asyncgens"):
            await g.__anext__()
        await g.aclose()

    run_coro(loop, main())


def test_shutdown_asyncgens_with_nothing_pending(loop):
    assert run_coro(loop, loop.shutdown_asyncgens()) is None
