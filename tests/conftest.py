"""Fixtures shared by test modules: the booted tier's package (test_booted*.py) and the lab's
VPC CNI node (test_daemon_lab.py, test_cli_lab.py). A module that defines a fixture of the same
name (a booted module's `node`, a lab module with a layout of its own) uses its own."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests import node as nodemod

if TYPE_CHECKING:
    from tests.lab import Lab


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


@pytest.fixture
def node() -> Iterator[Lab]:
    """A lab node in the VPC CNI layout (tests/test_daemon_lab.py's vpc_node): the primary and two
    secondary ENIs, strict-mode node rules, pods on every ENI, a dual-stack pod; networkd run the
    way a node runs it (socket-activated, udev). One per test: every test wipes and repairs it."""
    from tests.test_daemon_lab import vpc_node  # the lab's helpers load only where a test asks for it

    with vpc_node() as lab:
        yield lab
