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


def test_the_encoder_loads_two_of_pyroute2s_message_classes_not_all_of_pyroute2() -> None:
    """Idle RSS (issue 13): pyroute2/__init__.py imports IPRoute, NDB (sqlite3), unittest.mock and
    multiprocessing, ~10 MB the daemon never uses; the encoder's import skips it. Whoever asks the
    package for a name later gets all of it, as usual."""
    code = ("import json, sys\nimport netd_hook.daemon.service\n"
            "heavy = ('pyroute2.iproute', 'pyroute2.ndb', 'sqlite3', 'unittest.mock')\n"
            "heavy = sorted(m for m in heavy if m in sys.modules)\n"
            "from pyroute2 import IPRoute\nimport pyroute2\n"
            "print(json.dumps([heavy, IPRoute.__name__, pyroute2.__version__, 'pyroute2.ndb' in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    heavy, name, version, later = json.loads(r.stdout)
    assert heavy == [] and name == "IPRoute" and version != "unknown" and later is True
