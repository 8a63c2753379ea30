"""Placing a run's waiting components into what other runs leave (replan.list_schedule)."""

from __future__ import annotations

from planflow.runtime.replan import Item, list_schedule

POOLS = {"p": {"cpu": 2.0, "mem_gib": 4.0}}


def test_waiting_components_move_up_when_what_held_the_pool_ends_earlier():
    todo = [Item("a", "p", 3.0, {"cpu": 1}, ()), Item("b", "p", 2.0, {"cpu": 2}, ("a",))]
    late = list_schedule(todo, POOLS, {"p": [(0.0, 30.0, {"cpu": 2})]})
    early = list_schedule(todo, POOLS, {"p": [(0.0, 4.0, {"cpu": 2})]})
    assert late == {"a": (30.0, 33.0), "b": (33.0, 35.0)}
    assert early == {"a": (4.0, 7.0), "b": (7.0, 9.0)}


def test_a_component_fills_a_gap_it_fits_and_waits_for_its_upstream_and_running_steps():
    held = {"p": [(0.0, 10.0, {"cpu": 1}), (12.0, 20.0, {"cpu": 2})]}
    todo = [
        Item("short", "p", 2.0, {"cpu": 1}, ()),
        Item("long", "p", 5.0, {"cpu": 1}, ()),
        Item("after", "p", 1.0, {"cpu": 1}, ("prep",)),
    ]
    times = list_schedule(todo, POOLS, held, done_at={"prep": 6.0})
    assert times["short"] == (0.0, 2.0)  # beside the 1-cpu holder
    assert times["long"] == (2.0, 7.0)  # fits before 10 beside it, after the short one
    assert times["after"] == (7.0, 8.0)  # its upstream ends at 6; the core is free from 7


def test_memory_counts_as_much_as_cpu():
    held = {"p": [(0.0, 5.0, {"cpu": 0.5, "mem_gib": 3.5})]}
    times = list_schedule([Item("m", "p", 1.0, {"cpu": 1, "mem_gib": 1}, ())], POOLS, held)
    assert times == {"m": (5.0, 6.0)}
