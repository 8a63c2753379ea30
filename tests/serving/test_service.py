"""The fraud-risk service end to end: the last run's model behind two replicas and
HAProxy answers as the batch run decided, and neither a replica killed under load nor
a newer run swapped in under load costs the client a request."""

from __future__ import annotations

import re
import signal
import stat
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from planflow.ops.processes import log_tail, wait_until
from planflow.serving.loadgen import BackgroundLoad
from planflow.serving.probes import ready, served_run
from planflow.serving.swap import RECORD_GRACE_SECONDS
from planflow.settings import StatePaths

from tests.serving.conftest import records, train

pytestmark = [pytest.mark.usefixtures("registered_blocks"), pytest.mark.slow]


def test_the_service_decides_as_the_batch_run_did(service, fraud_run):
    url, _, _ = service
    holdout = fraud_run.outputs["scores"].holdout.head(40)
    policy = fraud_run.outputs["decisions"]
    batch = dict(zip(holdout["txn_id"].to_list(), policy.label(holdout["score"].to_numpy()), strict=True))
    body = records(fraud_run.outputs["features"], batch)
    assert served_run(url, timeout=5) == fraud_run.flow_run_id

    answer = httpx.post(f"{url}/predict", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    online = answer.json()["predictions"]
    assert [p["decision"] for p in online] == [batch[r["txn_id"]] for r in body]
    expected_scores = holdout["score"].to_numpy()
    by_id = dict(zip(holdout["txn_id"].to_list(), expected_scores, strict=True))
    assert np.allclose([p["score"] for p in online], [by_id[r["txn_id"]] for r in body], rtol=1e-9)
    assert {p["decision"] for p in online} - {"approve", "review", "decline"} == set()

    one = httpx.post(f"{url}/predict", json=body[0], timeout=10).json()
    assert one["prediction"]["decision"] == batch[body[0]["txn_id"]]
    assert one["run"] == fraud_run.flow_run_name


def _replica_pid(port: int) -> int:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return conn.pid
    raise AssertionError(f"no process listens on port {port}")


def test_a_replica_killed_under_load_loses_no_request(service, fraud_run):
    url, port, _ = service
    body = records(fraud_run.outputs["features"], fraud_run.outputs["scores"].holdout["txn_id"].head(8).to_list())
    load = BackgroundLoad(f"{url}/predict", body, total=3000, concurrency=4).start()
    try:
        assert wait_until(lambda: load.result.ok >= 100, 30), load.result
        psutil.Process(_replica_pid(port + 1)).send_signal(signal.SIGKILL)
        killed_at = load.result.ok
        assert wait_until(lambda: load.result.ok >= killed_at + 300 or load.result.failed > 0, 60), load.result
    finally:
        result = load.finish()
    assert result.failed == 0, result.reasons
    assert result.ok >= killed_at + 300
    # the supervisor starts the killed replica again
    assert wait_until(lambda: ready(_replica(port + 1)), 60), "the killed replica was not started again"


def test_the_service_keeps_its_logs_in_the_private_state_folder(service):
    """Not a new folder in the system's temporary folder per start: the state folder's
    serve/PORT/, private to the user, the replicas' and HAProxy's logs in it."""
    _, port, log = service
    named = re.search(r"logs in (\S+)\)", log_tail(log, 20))
    assert named, log_tail(log, 20)
    folder = Path(named.group(1))
    assert folder == StatePaths.discover().home / "serve" / str(port)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    logs = sorted(path.name for path in folder.glob("*.log"))
    assert logs == ["haproxy.log", f"replica-{port + 1}.log", f"replica-{port + 2}.log"], logs


def _logs(log: Path) -> str:
    """The service's log and each replica's (in the folder the service names)."""
    text = log_tail(log, 20)
    named = re.search(r"logs in (\S+)\)", text)
    replicas = sorted(Path(named.group(1)).glob("replica-*.log")) if named else []
    return "\n".join([text, *(f"--- {path.name}:\n{log_tail(path, 20)}" for path in replicas)])


def _replica(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def test_a_newer_run_is_swapped_in_under_load_without_a_failed_request(service, fraud_run):
    url, port, log = service
    body = records(fraud_run.outputs["features"], fraud_run.outputs["scores"].holdout["txn_id"].head(8).to_list())
    assert wait_until(lambda: ready(_replica(port + 1)) and ready(_replica(port + 2)), 60)
    load = BackgroundLoad(f"{url}/predict", body, total=5000, concurrency=4).start()
    try:
        assert wait_until(lambda: load.result.ok >= 50, 30), load.result
        newer = train(seed=11)  # another model, a newer Completed run
        # bound: the replicas wait up to RECORD_GRACE_SECONDS for the run's task runs to be recorded
        swapped = wait_until(
            lambda: served_run(_replica(port + 1)) == newer == served_run(_replica(port + 2)),
            RECORD_GRACE_SECONDS + 30,
        )
        assert swapped, f"no swap to run {newer}; the service's logs:\n{_logs(log)}"
        said = (StatePaths.discover().home / "serve" / str(port) / f"replica-{port + 1}.log").read_text()
        assert "serving fraud-risk: run '" in said and f"({newer})" in said, said[-3000:]  # the swap is in its log
        swapped_at = load.result.ok
        assert wait_until(lambda: load.result.ok >= swapped_at + 100 or load.result.failed > 0, 30)
    finally:
        result = load.finish()
    assert result.failed == 0, result.reasons
    assert len(result.runs) == 2, result.runs  # answered by the old run, then by the new one
    metrics = httpx.get(f"http://127.0.0.1:{port + 1}/metrics", timeout=5).text
    assert "planflow_serving_model_swaps_total" in metrics


def test_a_streamed_body_over_the_limit_is_refused_with_an_answer_every_time(service):
    """A body sent in chunks (no Content-Length) over the limit: the replica answered 413
    and closed, and HAProxy, still sending, lost that answer for 2-11 of 20 bodies of
    0.3-5 MB (the client saw the connection closed). HAProxy now refuses it itself."""
    url, _, _ = service

    def chunks(size: int):
        for _ in range(size // 65536):
            yield b" " * 65536

    answers = [httpx.post(f"{url}/predict", content=chunks(size), timeout=30) for size in [400_000, 2_000_000] * 10]
    assert [a.status_code for a in answers] == [413] * 20
    assert "is over the limit of" in answers[0].json()["detail"], answers[0].text
