"""Fixtures of the operator tier's autotuner tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from specdecode_runtime.prometheus import PrometheusServer

from ..vllm_exporter import ExporterFleet


@pytest.fixture
def fleet(prometheus: PrometheusServer) -> Iterator[ExporterFleet]:
    """vLLM-format endpoints on 127.0.0.1, scraped by the session's Prometheus."""
    f = ExporterFleet(prometheus.targets_dir)
    yield f
    f.close()
