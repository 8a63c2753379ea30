"""A planned component's resources as the job variables of each work pool type.

    >>> job_variables("docker", cpu=1, gpu=0, mem_gib=1)
    {'image': 'planflow:dev', 'mem_limit': '1024m', 'memswap_limit': '1024m',
     'container_create_kwargs': {'nano_cpus': 1000000000}}
    >>> job_variables("kubernetes", cpu=2, gpu=1, mem_gib=4, gpu_pool=True)["gpu_limit"]
    '1'

The variable names are those of the base job templates shipped as package data in
`planflow/prefect/job_templates/`. `check_against_template` says which variable a
pool's template does not accept, or which value is above the maximum the
template declares, and what to change; `render_kubernetes_job` gives the
Kubernetes Job a worker would submit for a planned component.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

from prefect.utilities.templating import apply_values

# Package data: the base job templates ship inside planflow (importlib.resources).
TEMPLATES_DIR = Path(str(files("planflow.prefect") / "job_templates"))
POOL_TYPES = ("process", "docker", "kubernetes")
DEFAULT_IMAGE = "planflow:dev"
MAXIMUM_KEY = "x-planflow-maximum"  # a ceiling on a quantity string ("64g", "32", "128Gi")
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
NANO = 1_000_000_000
# Kubernetes' own Job/Pod fields that Prefect's worker insists on inside the pod spec
# (it validates the manifest against them); the API server drops them as unknown.
PREFECT_POD_SPEC_EXTRAS = ("completions", "parallelism")


class JobVariablesError(ValueError):
    """Job variables a pool's template does not accept; the message lists every problem."""


def load_template(pool_type: str) -> dict[str, Any]:
    """planflow's base job template for a pool type (process, docker, kubernetes)."""
    if pool_type not in POOL_TYPES:
        raise ValueError(f"unknown pool type {pool_type!r}; planflow has templates for {', '.join(POOL_TYPES)}")
    return json.loads((TEMPLATES_DIR / f"{pool_type}.json").read_text())


def _check_resources(cpu: float, gpu: int, mem_gib: float) -> None:
    problems = []
    if not (isinstance(cpu, (int, float)) and math.isfinite(cpu) and cpu > 0):
        problems.append(f"cpu={cpu!r}: must be a number > 0")
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        problems.append(f"gpu={gpu!r}: must be a whole number >= 0")
    if not (isinstance(mem_gib, (int, float)) and math.isfinite(mem_gib) and mem_gib > 0):
        problems.append(f"mem_gib={mem_gib!r}: must be a number > 0")
    if problems:
        raise JobVariablesError("bad planned resources: " + "; ".join(problems))


def _mebibytes(mem_gib: float) -> int:
    return max(1, math.ceil(mem_gib * 1024))


def _k8s_cpu(cpu: float) -> str:
    """Kubernetes CPU quantity: whole cores as "2", fractions in millicores ("500m")."""
    return str(int(cpu)) if float(cpu).is_integer() else f"{math.ceil(cpu * 1000)}m"


def job_variables(
    pool_type: str,
    cpu: float,
    gpu: int,
    mem_gib: float,
    image: str | None = None,
    gpu_pool: bool = False,
) -> dict[str, Any]:
    """The job variables that give a component its planned cpu, gpu and memory.

    - process: none (a process shares the machine; the planner's ledger keeps the
      components within the pool's capacity).
    - docker: `mem_limit` = `memswap_limit` (no swap beyond the plan), CPU quota as
      `container_create_kwargs.nano_cpus`, GPUs as `device_requests`.
    - kubernetes: requests = limits for cpu and memory (Guaranteed QoS, so the plan's
      numbers hold), `gpu_limit` (nvidia.com/gpu), and on a GPU pool the nodeSelector
      and tolerations of NVIDIA's device plugin.
    """
    _check_resources(cpu, gpu, mem_gib)
    if pool_type == "process":
        return {}
    if pool_type == "docker":
        mem = f"{_mebibytes(mem_gib)}m"
        kwargs: dict[str, Any] = {"nano_cpus": int(round(cpu * NANO))}
        if gpu:
            kwargs["device_requests"] = [{"driver": "nvidia", "count": gpu, "capabilities": [["gpu"]]}]
        return {
            "image": image or DEFAULT_IMAGE,
            "mem_limit": mem,
            "memswap_limit": mem,
            "container_create_kwargs": kwargs,
        }
    if pool_type == "kubernetes":
        mem = f"{_mebibytes(mem_gib)}Mi" if not float(mem_gib).is_integer() else f"{int(mem_gib)}Gi"
        variables: dict[str, Any] = {
            "image": image or DEFAULT_IMAGE,
            "cpu_request": _k8s_cpu(cpu),
            "cpu_limit": _k8s_cpu(cpu),
            "memory_request": mem,
            "memory_limit": mem,
        }
        if gpu:
            variables["gpu_limit"] = str(gpu)
        if gpu_pool or gpu:
            variables["node_selector"] = dict(GPU_NODE_SELECTOR)
            variables["tolerations"] = copy.deepcopy(GPU_TOLERATIONS)
        return variables
    raise ValueError(f"unknown pool type {pool_type!r}; use one of {', '.join(POOL_TYPES)}")


# -- checking job variables against a template ---------------------------------------
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
}


def quantity(value: Any) -> float:
    """A number from a Docker/Kubernetes quantity: "1g", "1024m" (Docker, bytes),
    "4Gi", "500m" (Kubernetes CPU millicores), "2"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a quantity")
    number, unit = float(match.group(1)), match.group(2)
    if unit in _UNITS:
        return number * _UNITS[unit]
    if unit.lower() in _UNITS:
        return number * _UNITS[unit.lower()]
    raise ValueError(f"{value!r}: unknown unit {unit!r}")


def _cpu_quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _object_branch(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object alternative of an `anyOf` (e.g. `object | null`), else the schema."""
    for branch in schema.get("anyOf", []):
        if branch.get("type") == "object":
            return branch
    return schema


def _check_value(path: str, value: Any, schema: Mapping[str, Any], problems: list[str]) -> None:
    if isinstance(value, Mapping):
        branch = _object_branch(schema)
        for key, item in value.items():
            sub = branch.get("properties", {}).get(key)
            if sub is not None:
                _check_value(f"{path}.{key}", item, sub, problems)
        return
    if isinstance(value, list):
        items = schema.get("items") or next(
            (b.get("items") for b in schema.get("anyOf", []) if b.get("type") == "array"), None
        )
        if items:
            for index, item in enumerate(value):
                _check_value(f"{path}[{index}]", item, items, problems)
        return
    maximum = schema.get("maximum")
    if maximum is not None and isinstance(value, (int, float)) and value > maximum:
        problems.append(f"{path}={value!r} is above the template's maximum {maximum!r}")
    ceiling = schema.get(MAXIMUM_KEY)
    if ceiling is not None and value is not None:
        is_cpu = "cpu" in path
        try:
            asked = _cpu_quantity(value) if is_cpu else quantity(value)
            limit = _cpu_quantity(ceiling) if is_cpu else quantity(ceiling)
        except ValueError as exc:
            problems.append(f"{path}={value!r} is not a valid quantity ({exc})")
            return
        if asked > limit:
            problems.append(f"{path}={value!r} is above the template's maximum {ceiling!r}")


def check_against_template(job_vars: Mapping[str, Any], template: Mapping[str, Any]) -> list[str]:
    """Every job variable the template does not accept, and every value above a
    maximum the template declares; empty when the pool can run it.

        >>> check_against_template({"mem_limit": "128g"}, load_template("docker"))
        ["mem_limit='128g' is above the template's maximum '64g'"]
    """
    properties = template.get("variables", {}).get("properties", {})
    problems: list[str] = []
    for name, value in job_vars.items():
        if name not in properties:
            problems.append(
                f"job variable {name!r} is not a variable of this pool's template "
                f"(it accepts: {', '.join(sorted(properties))})"
            )
            continue
        _check_value(name, value, properties[name], problems)
    return problems


def require_fits(job_vars: Mapping[str, Any], template: Mapping[str, Any], *, component: str, pool: str) -> None:
    """Raise JobVariablesError naming the component, the pool and what to change."""
    problems = check_against_template(job_vars, template)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise JobVariablesError(
            f"component '{component}' asks for more than work pool '{pool}' allows:\n{lines}\n"
            f"Fix: lower the component's resources (e.g. @component(cpu=..., mem_gib=...) or "
            f"`resources:` in the pipeline YAML), plan it on a bigger pool, or raise the maximum in "
            f"the base job template of work pool '{pool}' (`prefect work-pool update {pool} "
            f"--base-job-template FILE`; `planflow workpools apply` puts planflow's own back)."
        )


# -- the Kubernetes Job a worker would submit -----------------------------------------
def _variable_defaults(template: Mapping[str, Any]) -> dict[str, Any]:
    # As Prefect's workers do: a null default leaves the placeholder unset, so its key
    # disappears from the manifest.
    return {
        name: spec["default"]
        for name, spec in template["variables"]["properties"].items()
        if spec.get("default") is not None
    }


def render_kubernetes_job(
    job_vars: Mapping[str, Any],
    template: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    command: str = "prefect flow-run execute",
    strict: bool = True,
) -> dict[str, Any]:
    """The Job manifest for a planned component: the kubernetes template's
    `job_manifest` with its variables applied (`prefect.utilities.templating.apply_values`),
    then env, image and args filled in as `KubernetesWorkerJobConfiguration` does.

    `strict=True` also drops `completions`/`parallelism` from the pod spec: Prefect's
    worker requires them there, but they are not PodSpec fields, so a strict schema
    check (and a strict API server) would reject them.
    """
    template = template or load_template("kubernetes")
    values = {**_variable_defaults(template), **dict(job_vars)}
    values["env"] = {**values.get("env", {}), **dict(env or {})}
    values.setdefault("command", command)
    values.setdefault("name", "planflow-component")
    manifest = apply_values(copy.deepcopy(template["job_configuration"]["job_manifest"]), values)
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["env"] = [{"name": k, "value": str(v)} for k, v in values["env"].items() if v is not None]
    if isinstance(container.get("args"), str):
        container["args"] = container["args"].split()
    resources = container.get("resources", {})
    for key in ("limits", "requests"):
        if not resources.get(key):
            resources.pop(key, None)
    if strict:
        for key in PREFECT_POD_SPEC_EXTRAS:
            pod.pop(key, None)
    return manifest
