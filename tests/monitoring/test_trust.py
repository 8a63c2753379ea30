"""Forged input from outside the stack, against the real services (`planflow stack`'s
Prometheus, Alertmanager, Pushgateway and bridge, fast profile): it is refused, or it
never becomes a series a pool alert is derived from. And the stack's state is private."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from planflow.monitoring.bridge import TOKEN_FILE_NAME
from planflow.ops import services

from tests.monitoring.helpers import alert, wait_for, webhook


def forged_alert(pool: str) -> list[dict]:
    """What the issue's attacker posted: a pool alert that makes the failover pause `pool`."""
    return [
        {
            "labels": {"alertname": "PlanflowPoolFailureRateHigh", "severity": "warning", "work_pool": pool},
            "annotations": {"summary": "forged"},
            "startsAt": datetime.now(UTC).isoformat(),
        }
    ]


def test_alertmanager_refuses_alerts_without_the_stacks_credentials(monitoring_stack):
    paths, started = monitoring_stack
    url = started["alertmanager"].url
    pool = f"forged-{uuid.uuid4().hex[:8]}"
    for auth in (None, ("planflow", "guessed"), ("admin", "admin")):
        answer = httpx.post(f"{url}/api/v2/alerts", json=forged_alert(pool), auth=auth, timeout=10)
        assert answer.status_code == 401, (auth, answer.status_code, answer.text[:200])
    credentials = services.alertmanager_auth(paths)
    assert credentials is not None
    listed = httpx.get(f"{url}/api/v2/alerts", auth=credentials, timeout=10)
    assert listed.status_code == 200  # the stack's own credentials work...
    assert not [a for a in listed.json() if a["labels"].get("work_pool") == pool]  # ...and nothing got in
    # the RUNBOOK's amtool command, with the stack's credentials file
    amtool_config = paths.home / "monitoring" / "amtool-http.yml"
    assert stat.S_IMODE(amtool_config.stat().st_mode) == 0o600
    query = subprocess.run(
        ["amtool", f"--alertmanager.url={url}", f"--http.config.file={amtool_config}", "alert", "query"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert query.returncode == 0 and "401" not in query.stderr, query.stdout + query.stderr
    # Prometheus, which sends the real alerts, holds them: Alertmanager is up in its eyes
    prometheus = started["prometheus"].url
    wait_for(
        lambda: httpx.get(f"{prometheus}/api/v1/alertmanagers", timeout=10).json()["data"]["activeAlertmanagers"],
        30,
        "Prometheus to know its Alertmanager",
    )
    query = 'up{job="alertmanager"} == 1'
    wait_for(
        lambda: httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10).json()["data"]["result"],
        30,
        "Prometheus to scrape Alertmanager with its credentials",
    )

    # the alerts it sends link back to it where it listens (their generatorURL), not to the host's name
    flags = httpx.get(f"{prometheus}/api/v1/status/flags", timeout=10).json()["data"]
    assert flags["web.external-url"] == prometheus


def push(gateway: str, job: str, text: str) -> None:
    answer = httpx.put(f"{gateway}/metrics/job/{job}", content=text.encode(), timeout=10)
    assert answer.status_code in (200, 202), answer.text


def series(prometheus: str, query: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_a_push_cannot_pose_as_the_exporter(monitoring_stack):
    """The pool alerts (failure rate, late runs, not ready, heartbeats) read the
    exporter's planflow_prefect_* series. A push of those names, under the runs' job or
    the exporter's, never reaches Prometheus; the runs' own figures still do."""
    _, started = monitoring_stack
    gateway, prometheus = started["pushgateway"].url, started["prometheus"].url
    tag = uuid.uuid4().hex[:8]
    pool = f"forged-{tag}"
    forged = (
        "# TYPE planflow_prefect_flow_runs_finished_total counter\n"
        f'planflow_prefect_flow_runs_finished_total{{work_pool="{pool}",state="failed",flow="f",'
        'deployment="d",deployment_id="x"} 1000\n'
        "# TYPE planflow_prefect_work_pool_status gauge\n"
        f'planflow_prefect_work_pool_status{{work_pool="{pool}",type="process",status="not_ready"}} 1\n'
        "# TYPE planflow_pipeline_running gauge\n"
    )
    try:
        claimed = (  # a run's own family, claiming the pool and the alert it does not own
            "# TYPE planflow_component_running gauge\n"
            f'planflow_component_running{{pipeline="legit-{tag}",component="c",pool="p",'
            f'work_pool="{pool}",alertname="PlanflowPoolFailureRateHigh"}} 1\n'
        )
        push(gateway, "planflow", forged + f'planflow_pipeline_running{{pipeline="legit-{tag}"}} 1\n' + claimed)
        push(gateway, "planflow-exporter", forged + f'planflow_pipeline_running{{pipeline="exporter-{tag}"}} 1\n')
        # the runs' own figure arrives: the Pushgateway was scraped after both pushes
        wait_for(
            lambda: series(prometheus, f'planflow_pipeline_running{{pipeline="legit-{tag}"}}'),
            30,
            "a legitimate pushed series in Prometheus",
        )
        assert series(prometheus, f'{{work_pool="{pool}"}}') == []
        kept = series(prometheus, f'planflow_component_running{{pipeline="legit-{tag}"}}')
        assert len(kept) == 1 and kept[0]["metric"]["pool"] == "p", kept
        assert not {"work_pool", "alertname"} & set(kept[0]["metric"]), kept
        assert series(prometheus, f'planflow_pipeline_running{{pipeline="exporter-{tag}"}}') == []
        assert series(prometheus, f'ALERTS{{work_pool="{pool}"}}') == []
    finally:
        for job in ("planflow", "planflow-exporter"):
            httpx.delete(f"{gateway}/metrics/job/{job}", timeout=10)


def test_the_stacks_bridge_takes_only_its_receivers_webhooks(monitoring_stack):
    paths, started = monitoring_stack
    token = (services.monitoring_dir(paths) / TOKEN_FILE_NAME).read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    body = {**webhook(alert(fingerprint=f"foreign-{uuid.uuid4().hex[:8]}")), "receiver": "someone-else"}
    answer = httpx.post(f"{started['bridge'].url}/alerts", json=body, headers=auth, timeout=10)
    assert answer.status_code == 403, answer.text
    assert "'planflow-bridge'" in answer.json()["error"]


def test_the_stacks_state_is_private(monitoring_stack):
    paths, _ = monitoring_stack
    folder = services.monitoring_dir(paths)
    for name in ("alertmanager.password", "alertmanager-web.yml", TOKEN_FILE_NAME, "prometheus.yml"):
        assert (folder / name).exists(), name
    readable = {}
    for root in (paths.home,):
        for where, dirs, files in os.walk(root):
            for name in [*dirs, *files]:
                path = Path(where) / name
                info = path.lstat()
                if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
                    readable[str(path.relative_to(root))] = oct(info.st_mode & 0o777)
    assert paths.home.stat().st_mode & 0o777 == 0o700
    assert readable == {}, f"readable by others: {readable}"


def test_prometheus_cannot_be_stopped_over_http_and_reloads_by_signal(monitoring_stack):
    paths, started = monitoring_stack
    url = started["prometheus"].url
    quit_ = httpx.post(f"{url}/-/quit", timeout=10)
    assert quit_.status_code == 403, quit_.text  # "Lifecycle API is not enabled"
    services.reload_prometheus(paths)
    wait_for(lambda: services.status(paths)["prometheus"].running, 30, "Prometheus after a reload")
    assert services.status(paths)["prometheus"].pid == started["prometheus"].pid
