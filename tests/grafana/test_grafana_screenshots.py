"""scripts/screenshots.py: its helpers without Chromium; the real run only on request
(PLANFLOW_SCREENSHOTS=1: it starts its own Prefect server and takes ~30-45 s)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "screenshots.py"
spec = importlib.util.spec_from_file_location("planflow_screenshots", SCRIPT)
shots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shots)


def test_urls_point_at_the_prefect_ui_pages():
    ui = shots.ui_base("http://127.0.0.1:4200/api/")
    assert ui == "http://127.0.0.1:4200"
    assert shots.flow_run_url(ui, "abc") == "http://127.0.0.1:4200/runs/flow-run/abc"
    assert shots.artifact_url(ui, "xyz") == "http://127.0.0.1:4200/artifacts/artifact/xyz"
    assert shots.events_url(ui) == "http://127.0.0.1:4200/events"


def test_artifact_keys_match_the_run_flow_and_filter_by_run():
    from planflow.core import discovery as registry
    from planflow.runtime.reporting import artifact_key

    pipeline = registry.get("predictive-maintenance")
    for what in ("plan-figures", "planned-vs-actual"):
        assert shots.artifact_key(pipeline.name, what) == artifact_key(pipeline, what)
    body = shots.artifact_filter("predictive-maintenance-plan-figures", "run-1")
    assert body["artifacts"] == {
        "key": {"any_": ["predictive-maintenance-plan-figures"]},
        "flow_run_id": {"any_": ["run-1"]},
    }
    assert body["sort"] == "CREATED_DESC" and body["limit"] == 1


def test_chromium_command_is_headless_isolated_and_offline(tmp_path):
    command = shots.chromium_command("/usr/bin/chromium", "http://x/", tmp_path / "a.png", tmp_path / "p")
    assert command[0] == "/usr/bin/chromium" and command[-1] == "http://x/"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",
        "--window-size=1400,1000",
    ):
        assert flag in command
    assert f"--user-data-dir={tmp_path / 'p'}" in command
    assert f"--screenshot={tmp_path / 'a.png'}" in command


def test_shrink_brings_a_png_under_the_limit(tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 1000, 3), dtype=np.uint8)).save(path)
    assert path.stat().st_size > 300 * 1024
    shots.shrink(path, 300 * 1024)
    assert path.stat().st_size <= 300 * 1024


def test_committed_pictures_are_small_pngs():
    pictures = sorted((ROOT / "docs" / "images").glob("*.png"))
    assert {p.name for p in pictures} >= {
        "predictive-maintenance-flow-run.png",
        "predictive-maintenance-plan-figures.png",
        "predictive-maintenance-planned-vs-actual.png",
    }
    for picture in pictures:
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert picture.stat().st_size < 300 * 1024, picture.name


@pytest.mark.skipif(
    os.environ.get("PLANFLOW_SCREENSHOTS") != "1",
    reason="set PLANFLOW_SCREENSHOTS=1 to run scripts/screenshots.py for real "
    "(its own Prefect server + Chromium, ~30-45 s)",
)
def test_the_script_shoots_the_three_prefect_pages(tmp_path):
    if not shutil.which("chromium"):
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PLANFLOW_"))}
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--no-alert"], check=True, timeout=300, env=env, cwd=ROOT
    )
    names = {p.name for p in tmp_path.glob("*.png")}
    assert names == {
        "predictive-maintenance-flow-run.png",
        "predictive-maintenance-plan-figures.png",
        "predictive-maintenance-planned-vs-actual.png",
    }
