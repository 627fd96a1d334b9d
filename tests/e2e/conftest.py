"""The demo's whole stack, started per test: control plane, Prometheus, operator, pod runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from specdecode_runtime.demo import Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "stack")
    try:
        s.start(log=lambda *_: None)
        yield s
    finally:
        s.stop()
