"""planflow.jobvars: planned resources -> job variables, checked against the templates,
and the Kubernetes Job rendered for a planned component (validated offline)."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from planflow.prefect.jobvars import (
    GPU_NODE_SELECTOR,
    JobVariablesError,
    check_against_template,
    job_variables,
    load_template,
    render_kubernetes_job,
    require_fits,
)

K8S_VERSION = "1.30.0"


@pytest.mark.parametrize("pool_type", ["process", "docker", "kubernetes"])
def test_templates_start_from_prefects_defaults(pool_type):
    """Every variable and job_configuration key of Prefect's default template is kept."""
    from prefect.workers.process import ProcessWorker

    if pool_type == "process":
        default = ProcessWorker.get_default_base_job_template()
    elif pool_type == "docker":
        from prefect_docker.worker import DockerWorker

        default = DockerWorker.get_default_base_job_template()
    else:
        from prefect_kubernetes.worker import KubernetesWorker

        default = KubernetesWorker.get_default_base_job_template()
    ours = load_template(pool_type)
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(default["job_configuration"]) <= set(ours["job_configuration"])
    for name, spec in default["variables"]["properties"].items():
        if "default" in spec and name != "image":
            assert ours["variables"]["properties"][name].get("default") == spec["default"], name


@pytest.mark.parametrize("pool_type", ["process", "docker", "kubernetes"])
def test_job_variables_are_variables_of_the_template(pool_type):
    job_vars = job_variables(pool_type, cpu=2, gpu=1, mem_gib=4, gpu_pool=True)
    assert check_against_template(job_vars, load_template(pool_type)) == []


def test_docker_job_variables():
    assert job_variables("docker", cpu=1, gpu=0, mem_gib=1) == {
        "image": "planflow:dev",
        "mem_limit": "1024m",
        "memswap_limit": "1024m",
        "container_create_kwargs": {"nano_cpus": 1_000_000_000},
    }
    gpu = job_variables("docker", cpu=0.5, gpu=2, mem_gib=0.25, image="me/planflow:1")
    assert gpu["image"] == "me/planflow:1"
    assert gpu["mem_limit"] == "256m"
    assert gpu["container_create_kwargs"] == {
        "nano_cpus": 500_000_000,
        "device_requests": [{"driver": "nvidia", "count": 2, "capabilities": [["gpu"]]}],
    }


def test_process_pool_takes_no_resource_variables():
    assert job_variables("process", cpu=4, gpu=0, mem_gib=8) == {}


def test_kubernetes_job_variables_fractional():
    job_vars = job_variables("kubernetes", cpu=0.5, gpu=0, mem_gib=1.5)
    assert job_vars["cpu_request"] == job_vars["cpu_limit"] == "500m"
    assert job_vars["memory_request"] == job_vars["memory_limit"] == "1536Mi"
    assert "gpu_limit" not in job_vars and "node_selector" not in job_vars


def test_bad_resources_are_named():
    with pytest.raises(JobVariablesError, match=r"cpu=-1.*mem_gib=0"):
        job_variables("docker", cpu=-1, gpu=0, mem_gib=0)
    with pytest.raises(ValueError, match="unknown pool type 'ecs'"):
        job_variables("ecs", cpu=1, gpu=0, mem_gib=1)


def test_unknown_variable_is_named_with_what_the_template_accepts():
    problems = check_against_template({"cpus": 2}, load_template("docker"))
    assert len(problems) == 1
    assert "'cpus' is not a variable of this pool's template" in problems[0]
    assert "mem_limit" in problems[0]


def test_values_above_the_template_maximum_are_named():
    docker = check_against_template(job_variables("docker", cpu=32, gpu=8, mem_gib=128), load_template("docker"))
    assert "mem_limit='131072m' is above the template's maximum '64g'" in docker
    assert any(p.startswith("container_create_kwargs.nano_cpus=32000000000") for p in docker)
    assert any("device_requests[0].count=8" in p for p in docker)
    k8s = check_against_template(job_variables("kubernetes", cpu=64, gpu=16, mem_gib=256), load_template("kubernetes"))
    assert "cpu_limit='64' is above the template's maximum '32'" in k8s
    assert "gpu_limit='16' is above the template's maximum '8'" in k8s
    assert "memory_limit='256Gi' is above the template's maximum '128Gi'" in k8s


def test_a_component_asking_too_much_gets_the_fix():
    job_vars = job_variables("docker", cpu=24, gpu=0, mem_gib=2)
    with pytest.raises(JobVariablesError) as info:
        require_fits(job_vars, load_template("docker"), component="classifier", pool="docker")
    message = str(info.value)
    assert "component 'classifier' asks for more than work pool 'docker' allows" in message
    assert "nano_cpus=24000000000" in message
    assert "Fix: lower the component's resources" in message
    assert "prefect work-pool update docker --base-job-template FILE" in message


def test_server_enforces_the_template_maximum(work_pools):
    """The maxima are JSON-schema maxima: Prefect's server refuses them too."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    too_big = job_variables("docker", cpu=32, gpu=0, mem_gib=1)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("planflow-jobvars-check")
        with pytest.raises(PrefectHTTPStatusError) as info:
            client.create_deployment(flow_id=flow_id, name="too-big", work_pool_name="docker", job_variables=too_big)
    assert info.value.response.status_code == 422
    assert "nano_cpus" in info.value.response.text or "16000000000" in info.value.response.text


# -- the Kubernetes Job of a planned component ---------------------------------------
@pytest.fixture
def gpu_job() -> dict:
    job_vars = job_variables(
        "kubernetes", cpu=2, gpu=1, mem_gib=4, gpu_pool=True, image="registry.example.com/planflow:0.1.0"
    )
    return render_kubernetes_job(
        job_vars, env={"PREFECT_API_URL": "http://prefect-server:4200/api", "PLANFLOW_STEP": "classifier"}
    )


def test_rendered_job_carries_the_plan_field_by_field(gpu_job):
    assert gpu_job["apiVersion"] == "batch/v1" and gpu_job["kind"] == "Job"
    assert gpu_job["metadata"]["namespace"] == "default"
    pod = gpu_job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/planflow:0.1.0"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == GPU_NODE_SELECTOR
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {"PREFECT_API_URL": "http://prefect-server:4200/api", "PLANFLOW_STEP": "classifier"}
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert gpu_job["spec"]["backoffLimit"] == 0


def test_rendered_job_is_valid_for_kubernetes(gpu_job):
    kubernetes_validate.validate(gpu_job, K8S_VERSION, strict=True)


def test_cpu_only_job_has_no_gpu_settings():
    job = render_kubernetes_job(job_variables("kubernetes", cpu=1, gpu=0, mem_gib=1))
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_job():
    """The offline check is a real check: a Job without containers fails it."""
    job = render_kubernetes_job(job_variables("kubernetes", cpu=1, gpu=0, mem_gib=1))
    del job["spec"]["template"]["spec"]["containers"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_rendering_matches_prefects_worker(gpu_job):
    """Prefect's own KubernetesWorkerJobConfiguration accepts our template and yields the
    same resources, selector and tolerations."""
    import anyio
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = load_template("kubernetes")
    job_vars = job_variables("kubernetes", cpu=2, gpu=1, mem_gib=4, gpu_pool=True)

    async def build():
        return await KubernetesWorkerJobConfiguration.from_template_and_values(template, job_vars, client=object())

    config = anyio.run(build)
    pod = config.job_manifest["spec"]["template"]["spec"]
    ours = gpu_job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == ours["containers"][0]["resources"]
    assert pod["nodeSelector"] == ours["nodeSelector"]
    assert pod["tolerations"] == ours["tolerations"]
    # Plain JSON, as the worker submits it: a round trip gives back the same manifest
    # (a tuple, a set or an object would not survive it).
    assert json.loads(json.dumps(config.job_manifest)) == config.job_manifest
