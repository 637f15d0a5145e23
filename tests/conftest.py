"""Fixtures shared by the booted-node test modules (test_booted*.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import node as nodemod


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built from the working tree; NETD_HOOK_DEB=path uses a .deb built elsewhere."""
    missing = nodemod.tools_missing()
    if missing:
        pytest.fail(f"booted nodes need {', '.join(missing)}")
    if os.environ.get("NETD_HOOK_DEB"):
        return Path(os.environ["NETD_HOOK_DEB"])
    t0 = time.monotonic()
    path = nodemod.build_deb(tmp_path_factory.mktemp("booted-deb"))
    print(f"\nbuilt {path.name} in {time.monotonic() - t0:.1f}s")
    return path
