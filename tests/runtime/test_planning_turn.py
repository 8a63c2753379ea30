"""This machine's turn to plan (planning_turn.py): one run at a time, handed over at once,
freed when its process dies, and a hung holder waited for only so long."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from planflow.runtime import planning_turn


@pytest.fixture(autouse=True)
def with_wake(monkeypatch):
    monkeypatch.delenv("PLANFLOW_SLOT_WAKE", raising=False)


def test_one_run_at_a_time_and_the_next_gets_its_turn_at_once():
    first = planning_turn.take_turn(time.monotonic() + 5)
    assert first is not None, "no private folder for this machine's runs"
    try:
        started = time.monotonic()
        assert planning_turn.take_turn(time.monotonic() + 5, wait=0.3) is None  # held: waited, then gave up
        assert 0.3 <= time.monotonic() - started < 2.0
        assert planning_turn.take_turn(time.monotonic() + 0.2) is None  # the deadline bounds it too
    finally:
        planning_turn.leave(first)
    started = time.monotonic()
    second = planning_turn.take_turn(time.monotonic() + 5)
    assert second is not None and time.monotonic() - started < 0.5
    planning_turn.leave(second)


def test_a_turn_held_by_a_process_that_dies_is_free_at_once():
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from planflow.runtime import planning_turn as t\n"
            "assert t.take_turn(time.monotonic() + 5) is not None\n"
            "print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert planning_turn.take_turn(time.monotonic() + 5, wait=0.2) is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        turn = planning_turn.take_turn(time.monotonic() + 5, wait=1.0)
        assert turn is not None
        planning_turn.leave(turn)
    finally:
        if holder.poll() is None:
            holder.kill()


def test_no_local_turn_without_the_private_folder(monkeypatch):
    monkeypatch.setenv("PLANFLOW_SLOT_WAKE", "false")
    assert planning_turn.take_turn(time.monotonic() + 5) is None
