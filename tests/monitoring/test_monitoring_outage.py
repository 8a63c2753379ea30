"""The Prefect server goes down and comes back: the bridge delivers every alert exactly
once, and the exporter reports the outage and recovers. Uses a Prefect server of its
own (planflow.stack on its own state folder and port), not the session's."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from planflow.monitoring.bridge import create_app
from planflow.monitoring.exporter import Exporter
from planflow.ops import server as stack
from planflow.settings import StatePaths

from tests.monitoring.helpers import ThreadedServer, alert, free_port, read_events, wait_for, webhook


def test_alerts_posted_while_prefect_is_down_arrive_exactly_once(prefect_server, tmp_path):
    paths = StatePaths(Path(tempfile.mkdtemp(prefix="planflow-outage-")))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    token = uuid.uuid4().hex
    auth = {"Authorization": f"Bearer {token}"}
    stack.up(paths, port=port)
    try:
        app = create_app(tmp_path / "spool.sqlite3", token, api, max_backoff=1.0)
        exporter = Exporter(api_url=api, poll_timeout=5)
        with ThreadedServer(app, free_port()) as bridge:
            assert asyncio.run(exporter.poll_once())
            stack.down(paths)
            assert not asyncio.run(exporter.poll_once())
            assert exporter.registry.get_sample_value("planflow_exporter_prefect_up") == 0

            pipeline = f"outage-{uuid.uuid4().hex[:8]}"
            start = datetime.now(UTC) - timedelta(minutes=1)
            sent = [alert("firing", f"fp{i}-{pipeline}", start, pipeline=pipeline, n=str(i)) for i in range(40)]
            sent += [alert("resolved", f"fp{i}-{pipeline}", start, pipeline=pipeline, n=str(i)) for i in range(10)]
            for i in range(0, len(sent), 10):
                response = httpx.post(f"{bridge.url}/alerts", json=webhook(*sent[i : i + 10]), headers=auth, timeout=30)
                assert response.status_code == 200, response.text
            # Alertmanager retries and duplicates: send a part again
            again = httpx.post(f"{bridge.url}/alerts", json=webhook(*sent[:15]), headers=auth)
            assert again.json() == {"stored": 0, "duplicates": 15}
            metrics = app.state.registry.get_sample_value
            wait_for(
                lambda: (metrics("planflow_bridge_forward_failures_total") or 0) >= 2,
                30,
                message="failed forwarding attempts while Prefect is down",
            )
            assert metrics("planflow_bridge_spool_depth") == 50

            stack.up(paths, port=port)
            wait_for(lambda: metrics("planflow_bridge_spool_depth") == 0, 60, message="the spool to drain")
            events = wait_for(
                lambda: (lambda e: e if len(e) >= 50 else None)(read_events(api, f"planflow.pipeline.{pipeline}")),
                30,
                0.5,
                "50 events",
            )
            keys = [(e["payload"]["fingerprint"], e["payload"]["status"]) for e in events]
            assert len(keys) == len(set(keys)) == 50
            assert sum(1 for _, s in keys if s == "resolved") == 10
            assert metrics("planflow_bridge_events_forwarded_total") == 50
            assert asyncio.run(exporter.poll_once())
            assert exporter.registry.get_sample_value("planflow_exporter_prefect_up") == 1
    finally:
        stack.down(paths)
