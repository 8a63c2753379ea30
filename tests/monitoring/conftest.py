"""Fixtures of the monitoring tests: the real services, on free loopback ports."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server) -> str:
    return os.environ["PREFECT_API_URL"].rstrip("/")
