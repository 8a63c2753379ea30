"""The process-pool watchdog on this process (its kill replaced by a recorder, so that
the test survives it; the real SIGKILL is tests/deployments/test_oom_process.py)."""

from __future__ import annotations

import time

from planflow.runtime.memory_watch import LIMIT_ENV, MemoryWatch, limit_from_env

MIB = 2**20


def _hold(mib: int) -> bytearray:
    held = bytearray(mib * MIB)
    held[::4096] = b"\x01" * len(held[::4096])  # every page written: resident
    return held


def test_past_its_limit_the_component_is_written_down_and_killed_kill_replaced():
    records, kills = [], []
    with MemoryWatch(32 * MIB, lambda peak, limit: records.append((peak, limit)), kill=lambda: kills.append(1)):
        held = _hold(96)
        deadline = time.monotonic() + 10  # held until a sample sees it (this process's old peak may be higher)
        while not kills and time.monotonic() < deadline:
            time.sleep(0.01)
        del held
    assert kills and records
    peak, limit = records[-1]
    assert limit == 32 * MIB and peak >= 90 * MIB  # the component's memory, not the process's


def test_within_its_limit_nothing_happens_kill_replaced():
    records, kills = [], []
    with MemoryWatch(256 * MIB, lambda peak, limit: records.append(peak), kill=lambda: kills.append(1)) as watch:
        held = _hold(16)
        del held
    assert not kills and not records and watch.peak < 256 * MIB


def test_a_bad_limit_is_named_and_no_watch_is_made(monkeypatch, caplog):
    monkeypatch.setenv(LIMIT_ENV, "lots")
    assert limit_from_env() is None
    assert "PLANFLOW_MEM_LIMIT_BYTES='lots' is not a number of bytes" in caplog.text
    monkeypatch.setenv(LIMIT_ENV, str(512 * MIB))
    assert limit_from_env() == 512 * MIB
