"""ResourcePool and PlannerSettings blocks on a real Prefect server; pool placement errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import toy_dags
from pydantic import ValidationError

from planflow.core.component import component
from planflow.core.pipeline import Pipeline
from planflow.prefect.blocks import PlannerSettings, ResourcePool, ensure_defaults, load_pools, local_pool_from_machine
from planflow.prefect.blocks.registry import load_settings, read_run_blocks
from planflow.runtime.planning import KnownPools, PoolError, allowed_pools, greedy_assignments


def _meminfo_total_gib() -> float:
    """MemTotal from the kernel, read here (not through planflow's or psutil's code)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024 / 2**30
    raise AssertionError("/proc/meminfo has no MemTotal line")


def test_local_pool_is_sized_from_this_machine():
    pool = local_pool_from_machine()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    assert pool.cpu == sum(1 for line in cpuinfo if line.startswith("processor"))
    assert pool.mem_gib == round(_meminfo_total_gib(), 1)  # GiB to one decimal, as documented
    assert abs(pool.mem_gib - _meminfo_total_gib()) <= 0.05
    assert pool.work_pool == "local-process" and pool.cost_per_hour == 0.0 and pool.backup_pool is None


def test_no_nvidia_smi_means_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi on it
    assert local_pool_from_machine().gpu == 0


def test_gpus_are_counted_from_nvidia_smi_faked_as_this_machine_has_no_gpu(monkeypatch, tmp_path):
    """This machine has no GPU, so `nvidia-smi -L` is a stand-in script printing what
    the real one prints for two GPUs (plus a MIG line that is not a GPU)."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0)'\n"
        "echo '  MIG 1g.5gb Device 0: (UUID: MIG-0)'\n"
        "echo 'GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-1)'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert local_pool_from_machine().gpu == 2


def test_fields_are_described_and_validated():
    schema = ResourcePool.model_json_schema()
    for name in ("work_pool", "cpu", "gpu", "mem_gib", "cost_per_hour", "backup_pool"):
        assert schema["properties"][name].get("description"), name
    with pytest.raises(ValidationError, match="cpu"):
        ResourcePool(work_pool="x", cpu=-1, mem_gib=1)
    with pytest.raises(ValidationError, match="solver"):
        PlannerSettings(solver="gurobi")


def test_defaults_are_created_once_and_user_edits_kept(registered_blocks):
    again = ensure_defaults()
    assert again["local"] is False and again["default"] is False
    assert again["planflow-work-pool-not-ready"] is False and not any(again.values()), again
    ResourcePool(work_pool="gpu-pool", cpu=8, gpu=2, mem_gib=64, cost_per_hour=3.5, backup_pool="local").save(
        "gpu", overwrite=True
    )
    try:
        pools = load_pools()
        assert {"local", "gpu"} <= set(pools)
        assert pools["gpu"].capacity() == {"cpu": 8.0, "gpu": 2.0, "mem_gib": 64.0}
        assert pools["gpu"].backup_pool == "local"
    finally:
        ResourcePool.delete("gpu")  # other modules plan over every pool that exists


def test_a_runs_pools_and_settings_come_in_one_read_paged_as_each_is_read_alone(registered_blocks):
    ResourcePool(work_pool="gpu-pool", cpu=8, gpu=2, mem_gib=64).save("gpu-read", overwrite=True)
    try:
        alone_pools, alone_settings = load_pools(), load_settings()
        for page in (1, 2, 200):  # one document per page: every page is read, none twice
            blocks = read_run_blocks(page=page)
            assert {n: p.model_dump() for n, p in blocks.pools.items()} == {
                n: p.model_dump() for n, p in alone_pools.items()
            }
            assert blocks.pools["gpu-read"].capacity() == {"cpu": 8.0, "gpu": 2.0, "mem_gib": 64.0}
            assert blocks.settings.model_dump() == alone_settings.model_dump()
        assert alone_settings.model_dump() == PlannerSettings.load("default").model_dump()  # Prefect's own read
    finally:
        ResourcePool.delete("gpu-read")


CAPACITY = {"local": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}, "gpu": {"cpu": 8.0, "gpu": 1.0, "mem_gib": 32.0}}


def test_a_step_that_fits_no_pool_names_its_demand_every_capacity_and_the_fix():
    huge = component(toy_dags.total.fn, name="total", cpu=16, mem_gib=2, est_seconds=1)
    pipeline = Pipeline("too-big", [toy_dags.numbers, huge])
    with pytest.raises(PoolError) as caught:
        allowed_pools(pipeline, CAPACITY)
    message = str(caught.value)
    assert "step 'total' needs cpu=16, gpu=0, mem_gib=2 but fits no pool it may use" in message
    assert "local (cpu=2, gpu=0, mem_gib=4); gpu (cpu=8, gpu=1, mem_gib=32)" in message
    assert "Fix: lower its cpu to <= 8, or add a ResourcePool with cpu >= 16" in message
    assert "component's pools" not in message  # not pinned: any new pool big enough is used
    # a new pool is used by a run that names it (in-process runs use one pool)
    assert "and run it there (`planflow run NAME --pool POOL`, or --mode distributed over every pool)" in message
    with pytest.raises(PoolError) as over_every_pool:  # a distributed or Dask run plans over every pool already
        allowed_pools(pipeline, CAPACITY, KnownPools(CAPACITY))
    assert "--pool POOL" not in str(over_every_pool.value)


def test_a_pinned_step_that_fits_no_pool_is_told_to_name_a_bigger_pool_too():
    pinned = component(toy_dags.total.fn, name="total", cpu=4, mem_gib=2, est_seconds=1, pools=["local"])
    with pytest.raises(PoolError) as caught:
        allowed_pools(Pipeline("pinned", [toy_dags.numbers, pinned]), CAPACITY)
    assert (
        "Fix: lower its cpu to <= 2, or add a ResourcePool with cpu >= 4 "
        "and add it to the component's pools (now ['local'])" in str(caught.value)
    )


def test_an_unknown_pool_name_is_reported_with_the_closest():
    pinned = component(toy_dags.total.fn, name="total", pools=["gpus"], est_seconds=1)
    with pytest.raises(
        PoolError, match="step 'total' names pool 'gpus', which has no ResourcePool block. Did you mean 'gpu'?"
    ):
        allowed_pools(Pipeline("typo", [toy_dags.numbers, pinned]), CAPACITY)


def test_without_a_plan_each_step_takes_its_fastest_pool():
    fast_on_gpu = component(toy_dags.total.fn, name="total", est_seconds=10, est_seconds_by_pool={"gpu": 2})
    assignments = greedy_assignments(Pipeline("p", [toy_dags.numbers, fast_on_gpu]), CAPACITY, {"gpu": 1.0})
    assert assignments["total"].pool == "gpu"
    assert assignments["numbers"].pool == "local"  # same speed everywhere: the cheaper pool
