"""@component: the spec travels with the task; bad declarations fail at decoration."""

from __future__ import annotations

import pytest
from prefect.tasks import Task

from planflow.core.component import ComponentSpecError, ResourceSpec, component


def test_component_is_a_prefect_task_with_its_spec():
    @component(cpu=2, gpu=1, mem_gib=8, est_seconds=30, pools=["gpu"], est_seconds_by_pool={"gpu": 12})
    def train(features: list[float], seed: int = 7) -> float:
        return sum(features) + seed

    assert isinstance(train, Task)
    assert train.name == "train"
    assert train.spec == ResourceSpec(
        cpu=2.0, gpu=1, mem_gib=8.0, est_seconds=30.0, pools=("gpu",), est_seconds_by_pool={"gpu": 12}
    )
    assert train.spec.seconds_on("gpu") == 12 and train.spec.seconds_on("local") == 30
    assert train.spec.demand() == {"cpu": 2.0, "gpu": 1.0, "mem_gib": 8.0}
    assert train.fn([1.0, 2.0]) == 10.0
    assert train.with_options(name="other").spec == train.spec
    assert train.persist_result is True


def test_plain_call_form_wraps_a_function_defined_elsewhere():
    def double(x: int) -> int:
        return 2 * x

    wrapped = component(double, cpu=0.5, est_seconds=1)
    assert wrapped.spec.cpu == 0.5 and wrapped.fn(4) == 8


def test_every_problem_is_listed_at_once():
    with pytest.raises(ComponentSpecError) as caught:

        @component(cpu=-1, gpu=0.5, memory=4, est_seconds=0)
        def bad(x, y: int):
            return x

    message = str(caught.value)
    assert "component 'bad'" in message and "has 6 problems" in message
    assert "cpu=-1: must be a number > 0 (cores; fractions allowed). Fix: e.g. cpu=1 or 0.5" in message
    assert "gpu=0.5: must be a whole number >= 0" in message
    assert "unknown key 'memory'. Did you mean 'mem_gib'?" in message
    assert "est_seconds=0: must be a number > 0" in message
    assert "parameter 'x' has no type annotation" in message
    assert "the return value has no type annotation" in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"cpu": 0}, "cpu=0: must be a number > 0"),
        ({"cpu": "two"}, "cpu='two': must be a number > 0"),
        ({"mem_gib": -2}, "mem_gib=-2: must be a number > 0 (GiB of memory)"),
        ({"gpu": -1}, "gpu=-1: must be a whole number >= 0"),
        ({"gpu": True}, "gpu=True: must be a whole number >= 0"),
        ({"pools": "local"}, "pools='local': must be a list of pool names"),
        ({"cpus": 2}, "unknown key 'cpus'. Did you mean 'cpu'?"),
        ({"est_secnds": 2}, "unknown key 'est_secnds'. Did you mean 'est_seconds'?"),
        (
            {"pools": ["a"], "est_seconds_by_pool": {"b": 3}},
            "est_seconds_by_pool names ['b'] that are not in pools=['a']",
        ),
        ({"est_seconds_by_pool": {"gpu": 0}}, "est_seconds_by_pool={'gpu': 0}: must map pool names to seconds > 0"),
    ],
    ids=[
        "cpu-zero",
        "cpu-text",
        "mem-negative",
        "gpu-negative",
        "gpu-bool",
        "pools-string",
        "alias",
        "typo",
        "by-pool-stray",
        "by-pool-zero",
    ],
)
def test_each_bad_value_is_named_with_its_fix(values, expected):
    with pytest.raises(ComponentSpecError, match="has 1 problem:") as caught:
        component(lambda_free, **values)
    assert expected in str(caught.value)


def lambda_free(x: int) -> int:
    return x


def test_with_spec_validates_like_the_decorator():
    comp = component(lambda_free, cpu=1)
    assert comp.with_spec(cpu=4).spec.cpu == 4 and comp.spec.cpu == 1
    with pytest.raises(ComponentSpecError, match="cpu=-3"):
        comp.with_spec(cpu=-3)


def test_var_args_are_refused():
    def loose(*args: int) -> int:
        return 0

    with pytest.raises(ComponentSpecError, match=r"parameter 'args' is \*args/\*\*kwargs"):
        component(loose)
