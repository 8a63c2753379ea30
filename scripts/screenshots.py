"""Screenshots of what users look at, taken with headless Chromium (no Grafana runs here).

    .venv/bin/python scripts/screenshots.py [--out docs/images] [--no-alert]

It starts its own Prefect server (a temporary state folder, a free port), runs the
predictive-maintenance pipeline on small data and shoots: the flow run page, its
plan-figures artifact (the Gantt picture), its planned-vs-actual artifact, and, unless
--no-alert, the Event Feed after a real `planflow.alert.firing` event: the monitoring
services (fast profile) watch a run of the `demo-failure` pipeline fail. Everything it
started is stopped at the end. PNGs larger than --max-kb are downscaled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from planflow import to_flow

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "predictive-maintenance"
SMALL_PARAMS = {"n_machines": 24, "n_folds": 3, "max_iter": 30, "n_trees": 50}
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,1000",
    "--virtual-time-budget=15000",
)


# -- helpers (pure; tested without Chromium) --------------------------------------------
def ui_base(api_url: str) -> str:
    """The Prefect UI's address for an API url: http://127.0.0.1:4200/api -> http://127.0.0.1:4200"""
    api_url = api_url.rstrip("/")
    return api_url[: -len("/api")] if api_url.endswith("/api") else api_url


def flow_run_url(ui: str, flow_run_id: str) -> str:
    return f"{ui}/runs/flow-run/{flow_run_id}"


def artifact_url(ui: str, artifact_id: str) -> str:
    return f"{ui}/artifacts/artifact/{artifact_id}"


def events_url(ui: str) -> str:
    return f"{ui}/events"


def artifact_key(pipeline: str, what: str) -> str:
    """The key flows.runner gives a pipeline's artifact (`<slug>-<what>`)."""
    slug = "".join(c if c.isalnum() else "-" for c in pipeline.lower()).strip("-")
    return f"{slug}-{what}"


def artifact_filter(key: str, flow_run_id: str | None = None) -> dict[str, Any]:
    """Body of POST /api/artifacts/filter for the latest artifact with `key` (of one run)."""
    body: dict[str, Any] = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    if flow_run_id:
        body["artifacts"]["flow_run_id"] = {"any_": [flow_run_id]}
    return body


def chromium_command(binary: str, url: str, out: Path, profile_dir: Path) -> list[str]:
    return [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", f"--screenshot={out}", url]


def shrink(path: Path, max_bytes: int) -> None:
    """Downscale (and quantise) a PNG until it is at most `max_bytes`."""
    from PIL import Image

    if path.stat().st_size <= max_bytes:
        return
    image = Image.open(path).convert("RGB")
    scale = 1.0
    while path.stat().st_size > max_bytes and scale > 0.3:
        scale *= 0.85
        size = (int(image.width * scale), int(image.height * scale))
        image.resize(size, Image.LANCZOS).quantize(colors=256).save(path, optimize=True)


# -- the run -----------------------------------------------------------------------------
def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


def shoot(url: str, out: Path, max_kb: int) -> Path:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not binary:
        raise SystemExit("chromium not found. Fix: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="planflow-chromium-") as profile:
        subprocess.run(
            chromium_command(binary, url, out, Path(profile)),
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    shrink(out, max_kb * 1024)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB) <- {url}")
    return out


def _latest_flow_run(api: str, flow_name: str) -> str:
    runs = _post(
        f"{api}/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_DESC", "limit": 1}
    )
    if not runs:
        raise SystemExit(f"no flow run of {flow_name} found at {api}")
    return runs[0]["id"]


def _firing_event(api: str) -> dict | None:
    answer = _post(f"{api}/events/filter", {"filter": {"event": {"prefix": ["planflow.alert.firing"]}}, "limit": 1})
    events = answer.get("events") if isinstance(answer, dict) else None
    return events[0] if events else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--max-kb", type=int, default=300)
    parser.add_argument("--no-alert", action="store_true", help="skip the monitoring stack and the Event Feed")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, str(ROOT))
    from planflow.ops.server import free_port
    from planflow.settings import StatePaths, apply_client_env, server_url

    home = Path(tempfile.mkdtemp(prefix="planflow-screenshots-"))
    port = free_port()
    os.environ["PLANFLOW_HOME"] = str(home)
    os.environ["PREFECT_API_URL"] = server_url("127.0.0.1", port)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    paths = StatePaths(home)
    apply_client_env(paths)  # before anything imports Prefect

    from planflow.ops import server as stack

    api = os.environ["PREFECT_API_URL"]
    ui = ui_base(api)
    services = None
    try:
        stack.up(paths, port=port)
        from planflow.core import discovery as registry
        from planflow.prefect.blocks import ensure_defaults

        ensure_defaults()
        if not args.no_alert:
            from planflow.ops import services as services_module

            services = services_module
            ports = {name: free_port() for name in services.ORDER}
            started = services.up(paths, profile="fast", ports=ports)
            os.environ["PLANFLOW_PUSHGATEWAY_URL"] = started["pushgateway"].url

        to_flow(registry.get(PIPELINE))(**SMALL_PARAMS)
        run_id = _latest_flow_run(api, PIPELINE)
        shoot(flow_run_url(ui, run_id), args.out / f"{PIPELINE}-flow-run.png", args.max_kb)
        for what in ("plan-figures", "planned-vs-actual"):
            found = _post(f"{api}/artifacts/filter", artifact_filter(artifact_key(PIPELINE, what), run_id))
            if not found:
                raise SystemExit(f"artifact {artifact_key(PIPELINE, what)} of flow run {run_id} not found")
            shoot(artifact_url(ui, found[0]["id"]), args.out / f"{PIPELINE}-{what}.png", args.max_kb)

        if services is not None:
            try:
                to_flow(registry.get("demo-failure"))(**{})
            except Exception:
                pass  # it fails on purpose; its failure raises the alert
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and _firing_event(api) is None:
                time.sleep(1)
            if _firing_event(api) is None:
                print("no planflow.alert.firing event arrived within 90 s: Event Feed not shot")
            else:
                shoot(events_url(ui), args.out / "event-feed-alert-firing.png", args.max_kb)
    finally:
        if services is not None:
            services.down(paths)
        try:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
        except Exception:
            pass
        stack.down(paths)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
