"""monitoring/bridge/ over real HTTP, forwarding to the session's real Prefect server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planflow.monitoring.bridge import TokenError, create_app, resolve_token

from tests.monitoring.helpers import (
    ThreadedServer,
    alert,
    free_port,
    read_events,
    wait_for,
    webhook,
)

TOKEN = "test-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def bridge(prefect_api_url, tmp_path_factory):
    app = create_app(
        tmp_path_factory.mktemp("bridge") / "spool.sqlite3", TOKEN, prefect_api_url, max_body_bytes=256 * 1024
    )
    with ThreadedServer(app, free_port()) as server:
        server.app = app
        yield server


def post(bridge, body, headers=AUTH, **kw):
    if isinstance(body, (bytes, str)):
        return httpx.post(
            f"{bridge.url}/alerts",
            content=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=30,
            **kw,
        )
    return httpx.post(f"{bridge.url}/alerts", json=body, headers=headers, timeout=30)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def events_about(api, pipeline, count, timeout=30.0):
    """Wait until `count` events name the pipeline; then make sure no more arrive."""
    found = wait_for(
        lambda: (lambda e: e if len(e) >= count else None)(read_events(api, f"planflow.pipeline.{pipeline}")),
        timeout,
        f"{count} events about {pipeline}",
        interval=0.5,
    )
    return found


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}],
    ids=["none", "wrong", "not-bearer", "empty"],
)
def test_unauthenticated_callers_get_401(bridge, headers):
    response = post(bridge, webhook(alert()), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in response.json()["detail"]


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b'{"alerts": [', 400, "not valid JSON"),
        (b"", 400, "not valid JSON"),
        (b"[1, 2]", 422, "valid dictionary"),
        (b'{"alerts": []}', 422, "alerts"),
        (b'{"alerts": "nope"}', 422, "alerts"),
        (
            json.dumps(
                {"alerts": [{"status": "maybe", "labels": {"a": "b"}, "startsAt": "2030-01-01T00:00:00Z"}]}
            ).encode(),
            422,
            "alerts.0.status",
        ),
        (
            json.dumps(
                {"alerts": [{"status": "firing", "labels": {"a": 1}, "startsAt": "2030-01-01T00:00:00Z"}]}
            ).encode(),
            422,
            "alerts.0.labels.a",
        ),
        (
            json.dumps({"alerts": [{"status": "firing", "labels": {"a": "b"}, "startsAt": "yesterday"}]}).encode(),
            422,
            "alerts.0.startsAt",
        ),
        (
            json.dumps({"alerts": [{"status": "firing", "labels": {"a": "b"}}]}).encode(),
            422,
            "startsAt: Field required",
        ),
    ],
    ids=[
        "truncated",
        "empty",
        "array",
        "no-alerts",
        "alerts-string",
        "bad-status",
        "label-int",
        "bad-time",
        "missing-time",
    ],
)
def test_malformed_bodies_get_a_4xx_naming_the_problem(bridge, body, status, words):
    response = post(bridge, body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_oversized_bodies_get_413(bridge):
    big = webhook(alert(description="x" * (300 * 1024)))
    response = post(bridge, big)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_firing_and_resolved_in_one_payload_become_two_events(bridge, prefect_api_url):
    pipeline = f"two-{uuid.uuid4().hex[:8]}"
    start = now() - timedelta(minutes=2)
    body = webhook(
        alert("firing", "fp-a-" + pipeline, start, pipeline=pipeline, work_pool="local"),
        alert("resolved", "fp-b-" + pipeline, start, pipeline=pipeline),
    )
    body["unknownTopLevel"] = {"nested": [1, 2]}
    body["alerts"][0]["someFutureField"] = "ignored"
    response = post(bridge, body)
    assert response.status_code == 200 and response.json() == {"stored": 2, "duplicates": 0}
    events = events_about(prefect_api_url, pipeline, 2)
    assert sorted(e["event"] for e in events) == ["planflow.alert.firing", "planflow.alert.resolved"]
    firing = next(e for e in events if e["event"] == "planflow.alert.firing")
    assert firing["resource"]["prefect.resource.id"] == f"planflow.pipeline.{pipeline}"
    related = {r["prefect.resource.id"]: r["prefect.resource.role"] for r in firing["related"]}
    assert related["prefect.work-pool.local"] == "work-pool"
    payload = firing["payload"]
    assert payload["fingerprint"] == "fp-a-" + pipeline
    assert payload["labels"]["pipeline"] == pipeline
    assert payload["annotations"]["summary"] == "a test alert"
    assert payload["startsAt"] == start.isoformat().replace("+00:00", "Z")
    assert "someFutureField" not in json.dumps(firing)


def test_duplicates_yield_one_event(bridge, prefect_api_url):
    pipeline = f"dup-{uuid.uuid4().hex[:8]}"
    one = alert("firing", "fp-" + pipeline, now(), pipeline=pipeline)
    assert post(bridge, webhook(one, one)).json() == {"stored": 1, "duplicates": 1}
    for _ in range(3):
        assert post(bridge, webhook(one)).json() == {"stored": 0, "duplicates": 1}
    events_about(prefect_api_url, pipeline, 1)
    wait_for(lambda: httpx.get(f"{bridge.url}/health").json()["spool_depth"] == 0, 20, "the spool to drain")
    assert len(read_events(prefect_api_url, f"planflow.pipeline.{pipeline}")) == 1


def test_flow_run_and_deployment_labels_become_prefect_resources(bridge, prefect_api_url):
    run_id, dep_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = webhook(alert("firing", "fp-" + run_id, now(), flow_run_id=run_id, deployment_id=dep_id, flow="boom"))
    assert post(bridge, body).status_code == 200
    events = wait_for(
        lambda: read_events(prefect_api_url, f"prefect.flow-run.{run_id}"), 30, "the flow run's events", interval=0.5
    )
    event = events[0]
    assert event["resource"]["prefect.resource.id"] == f"prefect.flow-run.{run_id}"
    ids = {r["prefect.resource.id"] for r in event["related"]}
    assert {f"prefect.deployment.{dep_id}", "prefect.flow.boom"} <= ids


def test_metrics_and_openapi_are_served(bridge):
    text = httpx.get(f"{bridge.url}/metrics").text
    for name in (
        "planflow_bridge_alerts_received_total",
        "planflow_bridge_alerts_duplicate_total",
        "planflow_bridge_events_forwarded_total",
        "planflow_bridge_forward_failures_total",
        "planflow_bridge_spool_depth",
    ):
        assert name in text
    spec = httpx.get(f"{bridge.url}/openapi.json").json()
    operation = spec["paths"]["/alerts"]["post"]
    assert {"401", "413", "422"} <= set(operation["responses"])
    assert "Webhook" in json.dumps(spec["components"]["schemas"])


def test_token_file_is_created_once_private_and_env_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("PLANFLOW_BRIDGE_TOKEN", raising=False)
    path = tmp_path / "m" / "bridge.token"
    first = resolve_token(path)
    assert len(first) >= 32 and resolve_token(path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("PLANFLOW_BRIDGE_TOKEN", "from-env-0123456789")
    assert resolve_token(path) == "from-env-0123456789"


def test_a_token_file_others_can_read_is_made_private_and_said(tmp_path, monkeypatch, caplog):
    """An existing token file was used as it was, readable by anyone on the machine."""
    monkeypatch.delenv("PLANFLOW_BRIDGE_TOKEN", raising=False)
    path = tmp_path / "bridge.token"
    path.write_text("a-token-of-the-right-length-0123456789\n")
    path.chmod(0o644)
    with caplog.at_level("WARNING", logger="planflow.bridge"):
        assert resolve_token(path) == "a-token-of-the-right-length-0123456789"
    assert path.stat().st_mode & 0o777 == 0o600
    assert "was readable by others (mode 644): made private (600)" in caplog.text and "rotate it" in caplog.text


@pytest.mark.parametrize(
    "token, words",
    [
        ("change-me-before-applying", "placeholder"),
        ("CHANGEME", "placeholder"),
        ("replace-me-with-a-real-token", "placeholder"),
        ("short-token", "11 characters"),
    ],
    ids=["shipped-placeholder", "changeme", "replace-me", "too-short"],
)
def test_guessable_tokens_are_refused_naming_the_source_and_the_fix(tmp_path, monkeypatch, token, words):
    monkeypatch.setenv("PLANFLOW_BRIDGE_TOKEN", token)
    with pytest.raises(TokenError) as refused:
        resolve_token(tmp_path / "bridge.token")
    message = str(refused.value)
    assert words in message and "PLANFLOW_BRIDGE_TOKEN" in message and "openssl rand" in message


# -- fuzz: whatever arrives, the answer is 200 or a 4xx, never a crash -----------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
label_maps = st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=20), min_size=1, max_size=5)
valid_alerts = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["firing", "resolved"]),
        "labels": label_maps.map(lambda d: {**d, "pipeline": "fuzz"}),
        "annotations": st.dictionaries(st.text(max_size=8), st.text(max_size=30), max_size=3),
        # any time at any offset: year 1 at +01:00 is out of range in UTC (a 500 before)
        "startsAt": st.one_of(
            st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)),
            st.datetimes(timezones=st.builds(timezone, st.timedeltas(-timedelta(hours=23), timedelta(hours=23)))),
        ).map(lambda d: d.isoformat()),
        "fingerprint": st.text(alphabet="0123456789abcdef", min_size=1, max_size=16),
    },
    optional={"endsAt": st.just("0001-01-01T00:00:00Z"), "extra": json_values},
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"alerts": st.lists(valid_alerts, min_size=1, max_size=5)},
        optional={"version": json_values, "status": json_values},
    ),
    st.fixed_dictionaries(
        {
            "alerts": st.lists(
                st.dictionaries(
                    st.sampled_from(["status", "labels", "startsAt", "fingerprint", "annotations"]), json_values
                ),
                max_size=3,
            )
        }
    ),
)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_fuzzed_bodies_never_get_a_5xx(bridge, body, raw):
    response = post(bridge, raw) if raw is not None else post(bridge, body)
    assert response.status_code in (200, 400, 415, 422), response.text
    assert response.status_code < 500
    if response.status_code == 200:
        answer = response.json()
        assert answer["stored"] + answer["duplicates"] == len(body["alerts"])
    else:
        assert response.json()["error"]


def test_a_time_out_of_range_in_utc_is_a_422_naming_it(bridge):
    """Times that Python cannot hold in UTC made the handler fail (a 500)."""
    for field, value in (
        ("startsAt", "0001-01-01T00:00:00+01:00"),
        ("startsAt", "9999-12-31T23:30:00-01:00"),
        ("endsAt", "9999-12-31T23:30:00-01:00"),
    ):
        body = webhook({**alert(status="resolved", fingerprint=f"range-{field}"), field: value})
        response = post(bridge, body)
        assert response.status_code == 422, response.text
        assert field in response.text and "out of range once in UTC" in response.text, response.text


def test_an_alert_over_the_event_bound_arrives_with_its_annotations_cut(prefect_api_url, tmp_path):
    """An alert within the webhook's bounds (64 labels of 1 kB, 64 annotations of 8 kB) made
    an event of 3.4 MB as JSON with accented text, stored whole by the server at each resend
    (Prefect's own clients refuse an event over 1.5 MB)."""
    labels = {f"l{i}": "é" * 1000 for i in range(60)} | {"alertname": "PlanflowBigAlert", "pipeline": "big-alert"}
    big = {**alert(fingerprint="big-alert", **labels), "annotations": {f"a{i}": "ü" * 8000 for i in range(64)}}
    app = create_app(tmp_path / "spool.sqlite3", TOKEN, prefect_api_url)
    emoji = {f"l{i}": "\U0001f600" * 1024 for i in range(60)} | {"pipeline": "huge-alert"}  # 12 bytes each, escaped
    huge = {**alert(fingerprint="huge", **emoji), "annotations": {f"a{i}": "\U0001f600" * 4000 for i in range(64)}}
    with ThreadedServer(app, free_port()) as server:
        response = post(server, webhook(big))
        assert response.status_code == 200, response.text
        [event] = events_about(prefect_api_url, "big-alert", 1)
        # annotations of 1024 characters still made 1.6 MB with emoji: cut further, to fit
        assert post(server, webhook(huge)).status_code == 200
        [fitted] = events_about(prefect_api_url, "huge-alert", 1)
    annotations = event["payload"]["annotations"]
    assert len(annotations) == 64 and all("cut by the planflow bridge" in v for v in annotations.values())
    assert event["payload"]["annotations_cut_from_bytes"] > 1_500_000
    assert event["payload"]["labels"]["l0"] == "é" * 1000  # what the alert is about is whole
    assert len(json.dumps(fitted["payload"])) < 1_000_000 and fitted["payload"]["labels"]["l0"] == emoji["l0"]


def test_webhooks_of_another_receiver_or_alertmanager_are_refused(prefect_api_url, tmp_path):
    app = create_app(
        tmp_path / "spool.sqlite3",
        TOKEN,
        prefect_api_url,
        forward=False,
        receiver="planflow-bridge",
        alertmanager_url="http://127.0.0.1:9093/",
    )
    with ThreadedServer(app, free_port()) as server:
        ours = post(server, webhook(alert(fingerprint="ours")))
        assert ours.status_code == 200, ours.text
        for field, value in (("receiver", "someone-else"), ("externalURL", "http://forger:9093")):
            response = post(server, {**webhook(alert(fingerprint=f"not-{field}")), field: value})
            assert response.status_code == 403, response.text
            assert value in response.json()["error"] and "configured Alertmanager" in response.json()["error"]
        assert app.state.spool.depth() == 1
