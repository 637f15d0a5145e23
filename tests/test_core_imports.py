"""The pure core imports no adapter (issue 12): every module in netd_hook/core/ (model, scope,
plan, decide, track, the kernel's plain data, the forgetting ledger, the status document...)
loads neither pyroute2 nor dbus-fast nor anyio, nor any of netd-hook's adapters, daemon or
commands, so that they are tested, and reasoned about, without any of them."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.daemon import ROOT

CORE = sorted(p.stem for p in (ROOT / "netd_hook" / "core").glob("*.py") if p.stem != "__init__")
OUTSIDE = ("pyroute2", "dbus_fast", "anyio", "netd_hook.adapters", "netd_hook.daemon", "netd_hook.commands")


def test_the_core_loads_no_adapter_package() -> None:
    code = ("import json, sys\n"
            + "".join(f"import netd_hook.core.{m}\n" for m in CORE)
            + f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({OUTSIDE!r}))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert {"model", "scope", "plan", "decide", "track"} <= set(CORE)
    assert json.loads(r.stdout) == []


def test_the_check_sees_an_adapter_when_one_is_loaded() -> None:
    """The same check, with netlink.py: it does load pyroute2 (else the test above proves nothing)."""
    code = "import json, sys\nimport netd_hook.adapters.netlink\nprint(json.dumps('pyroute2' in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(r.stdout) is True
