"""pyroute2's rule and route message classes, the encoder's, without running pyroute2/__init__.py
first: that imports all of pyroute2 (IPRoute, NDB with sqlite3, unittest.mock, multiprocessing:
226 modules, 12 MB resident in an idle daemon) where two message classes cost 2.6 MB.

The package module is created from its spec but not executed; the first time anyone asks it for
a name it does not have yet (`from pyroute2 import IPRoute`), its __init__ runs, once, into the
same module, so nothing else in the process notices. Submodule imports only need its __path__."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def _unexecuted(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not an ordinary package: the imports below do it the usual way (or fail)
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(attr: str) -> Any:
        del module.__dict__["__getattr__"]  # its __init__ may ask for names of its own as it runs
        loader.exec_module(module)
        return getattr(module, attr)

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[name] = module


_unexecuted("pyroute2")

from pyroute2.netlink.rtnl.fibmsg import fibmsg as fibmsg  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg as rtmsg  # noqa: E402

__all__ = ["fibmsg", "rtmsg"]
