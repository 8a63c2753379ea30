"""The blocks a run reads are kept in its process between runs while the real Prefect
server's events say no block changed (planflow.prefect.event_watch): a change made by
another process is seen within a bound, one made by this process at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time

import pytest

from planflow.ops.processes import wait_until
from planflow.prefect import event_watch
from planflow.prefect.blocks import ResourcePool, registry
from planflow.prefect.event_watch import watch

LIVE_WITHIN_SECONDS = 20.0  # the watch's subscription connects (and is trusted) within this
SEEN_WITHIN_SECONDS = 10.0  # another process's change reaches this process's reads within this
KEPT_WITHIN_SECONDS = 3 * event_watch.QUIET_AFTER_EVENT_SECONDS + 5  # a read is kept again after an event


def _live() -> None:
    """The blocks' watch is live (its subscription connected and trusted); fails loudly when not."""
    registry.read_run_blocks()  # the second read in a process starts it
    registry.read_run_blocks()
    watching = watch(registry.BLOCK_EVENTS)
    assert watching is not None, "PLANFLOW_KEEP_READS is off or PREFECT_API_URL unset"
    live = wait_until(lambda: watching.generation() is not None, LIVE_WITHIN_SECONDS, interval=0.05)
    assert live, f"the event watch did not connect within {LIVE_WITHIN_SECONDS:g} s"


def _kept_now() -> int:
    """Read the blocks until a read is kept (one read while live, or two when an event of
    the last test's changes came meanwhile); the count of reads sent to the server then."""

    def kept_one() -> bool:
        registry.read_run_blocks()
        sent = registry._kept_pages.requests
        registry.read_run_blocks()
        return registry._kept_pages.requests == sent

    kept = wait_until(kept_one, KEPT_WITHIN_SECONDS)
    assert kept, f"no read kept within {KEPT_WITHIN_SECONDS:g} s: every read went to the server"
    return registry._kept_pages.requests


def _cpu_of(name: str) -> float | None:
    """Pool `name`'s cpu as this process's blocks read says now (None: no such pool)."""
    pool = registry.read_run_blocks().pools.get(name)
    return None if pool is None else pool.cpu


def _save_elsewhere(name: str, cpu: float) -> None:
    """Another process saves ResourcePool `name` (as `planflow pools set` would)."""
    code = (
        "from planflow.prefect.blocks import ResourcePool; "
        f"ResourcePool(work_pool='local-process', cpu={cpu}, mem_gib=1).save({name!r}, overwrite=True)"
    )
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ), check=True, timeout=120)


@pytest.fixture
def kept(registered_blocks):
    _live()
    yield _kept_now()


def test_the_blocks_read_is_kept_until_another_process_changes_a_block(kept):
    name = "kept-elsewhere"
    try:
        for _ in range(3):  # kept: no request, the same pools each time, parsed anew (not shared objects)
            first, second = registry.read_run_blocks(), registry.read_run_blocks()
            assert registry._kept_pages.requests == kept
            assert first.pools.keys() == second.pools.keys() and first.pools["local"] is not second.pools["local"]
        assert name not in first.pools
        _save_elsewhere(name, cpu=3)
        seen = wait_until(lambda: _cpu_of(name) == 3, SEEN_WITHIN_SECONDS, interval=0.02)
        assert seen, f"a block saved by another process unseen after {SEEN_WITHIN_SECONDS} s"
        assert registry._kept_pages.requests > kept  # read again after the event
        _save_elsewhere(name, cpu=5)  # a second change too (the kept read taken after the first)
        seen = wait_until(lambda: _cpu_of(name) == 5, SEEN_WITHIN_SECONDS, interval=0.02)
        assert seen, f"the second change unseen after {SEEN_WITHIN_SECONDS} s"
    finally:
        ResourcePool.delete(name)


def test_a_block_saved_by_this_process_is_read_at_once(kept, monkeypatch):
    """Saved or deleted here, sync or async, the kept read goes at once, whatever the
    events: they are ignored in this test (on a local server a change's event often comes
    before its request returns, which made the kept read go without the block's own word)."""
    changed = event_watch.EventWatch._changed

    def events_unheard(self, live: bool, event: bool = False) -> None:
        if not event:
            changed(self, live)

    monkeypatch.setattr(event_watch.EventWatch, "_changed", events_unheard)
    name = "kept-here"

    def pool() -> ResourcePool | None:
        return registry.read_run_blocks().pools.get(name)

    def is_kept() -> None:
        sent = _kept_now()
        assert registry.read_run_blocks() and registry._kept_pages.requests == sent

    try:
        is_kept()
        ResourcePool(work_pool="local-process", cpu=7, mem_gib=1).save(name, overwrite=True)
        assert pool().cpu == 7  # no wait for the event
        is_kept()
        ResourcePool(work_pool="local-process", cpu=6, mem_gib=1).save(name, overwrite=True)
        assert pool().cpu == 6
        is_kept()
        ResourcePool.delete(name)
        assert pool() is None  # a delete too
        for deleting in (ResourcePool.adelete, ResourcePool.delete):  # async: adelete, and delete from async code

            async def save_then_delete(delete=deleting) -> None:
                await ResourcePool(work_pool="local-process", cpu=5, mem_gib=1).save(name, overwrite=True)
                is_kept()  # kept again with the block in it
                assert pool().cpu == 5
                await delete(name)

            asyncio.run(save_then_delete())
            assert pool() is None, deleting
    finally:
        with contextlib.suppress(ValueError):  # deleted above
            ResourcePool.delete(name)


def test_a_kept_read_stands_keep_seconds_at_most(kept, monkeypatch):
    monkeypatch.setattr(event_watch, "KEEP_SECONDS", 0.5)
    kept = _kept_now()
    registry.read_run_blocks()
    assert registry._kept_pages.requests == kept
    time.sleep(0.6)
    registry.read_run_blocks()  # no event came, yet it is read again
    assert registry._kept_pages.requests == kept + 1


def test_keeping_reads_off_sends_every_read_to_the_server(kept, monkeypatch):
    monkeypatch.setenv("PLANFLOW_KEEP_READS", "false")
    registry.read_run_blocks()
    registry.read_run_blocks()
    assert registry._kept_pages.requests == kept + 2


@pytest.mark.server
def test_a_watch_of_a_server_whose_event_stream_is_off_is_never_trusted(tmp_path, monkeypatch):
    """Each new connection is sent the last minute's events again, the probe of the
    connection before among them: taken for its own, it made the watch of a server with
    its event stream off live at its second connection (11 s), keeping reads for 60 s that
    no event would ever drop. Each connection now has a probe of its own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from planflow.ops import server as stack
    from planflow.ops.server import free_port
    from planflow.settings import StatePaths

    monkeypatch.setenv("PREFECT_API_EVENTS_STREAM_OUT_ENABLED", "false")  # the other server's: no events streamed
    paths = StatePaths(tmp_path / "quiet-server")
    state = stack.up(paths, port=free_port())
    monkeypatch.delenv("PREFECT_API_EVENTS_STREAM_OUT_ENABLED")
    monkeypatch.setattr(event_watch, "PROBE_WAIT_SECONDS", 1.5)
    monkeypatch.setattr(event_watch, "RETRY_SECONDS", (0.2,))
    probes = []
    send = event_watch.EventWatch._send_probe

    async def counted(self):
        probes.append(self._probe)
        await send(self)

    monkeypatch.setattr(event_watch.EventWatch, "_send_probe", counted)
    try:
        with temporary_settings({PREFECT_API_URL: state.url}):
            quiet = event_watch.EventWatch(state.url, registry.BLOCK_EVENTS)
            try:
                trusted = wait_until(lambda: quiet.generation() is not None, 8.0, interval=0.05)
                assert not trusted, f"trusted after {len(probes)} connections to a server that streams no events"
                assert len(probes) >= 3 and len(set(probes)) == len(probes), probes  # connections, each its own probe
            finally:
                quiet.close()
    finally:
        stack.down(paths)


def test_a_forked_child_does_not_wait_for_locks_another_thread_held_at_the_fork():
    """Only the forking thread goes on in a child: a lock another thread held at the fork
    was held there for ever, and the child's first read of the blocks waited for it."""
    import signal
    import threading

    kept = event_watch.KeptRead(lambda: 1, prefixes=("planflow.test.",))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with event_watch._watches_lock, kept._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    child = os.fork()
    if child == 0:  # the child: both locks free at once
        ok = event_watch._watches_lock.acquire(timeout=2) and kept._lock.acquire(timeout=2)
        os._exit(0 if ok else 1)
    release.set()
    holder.join()
    status: list[int] = []

    def child_ended() -> bool:
        pid, code = os.waitpid(child, os.WNOHANG)
        status.extend([code] if pid == child else [])
        return bool(status)

    if not wait_until(child_ended, 10, interval=0.05):
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    assert status and os.waitstatus_to_exitcode(status[0]) == 0, "the child waited for a lock held at the fork"
