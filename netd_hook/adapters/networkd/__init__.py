"""The D-Bus edge: verified systemd-networkd events (owner changes, link AdministrativeState).

`watch()` keeps one connection to the system bus and turns what networkd says there into the
plain events of `decide` (`OwnerChanged`, `LinksListed`, `LinkChanged`) plus `OwnerPid`. Nothing
downstream sees a dbus-fast `Message` or `Variant`.

Trust: any connection on the system bus may emit a signal with any object path and interface,
and only the bus daemon can set a message's sender (the Nimbuspwn class of bugs in
networkd-dispatcher came from trusting signal contents, CVE-2022-29799/29800). So a
`PropertiesChanged` counts only when its sender is the unique name that currently owns
org.freedesktop.network1, a `NameOwnerChanged` only when it comes from org.freedesktop.DBus,
and bus data never becomes a path or a command: object paths are built from validated integer
ifindexes, states must be one of `decide.KNOWN_STATES`, and unique names are only compared.

Ordering: match rules are added before the owner is asked for and links are listed
(subscribe, then list), so no change can fall between the listing and the first signal.

dbus-fast's aio `MessageBus` needs the asyncio backend of anyio.
"""

from __future__ import annotations

from .session import watch as watch
from .signals import BACKOFF_MAX as BACKOFF_MAX
from .signals import BACKOFF_MIN as BACKOFF_MIN
from .signals import CALL_TIMEOUT as CALL_TIMEOUT
from .signals import COUNTED as COUNTED
from .signals import DBUS_NAME as DBUS_NAME
from .signals import DBUS_PATH as DBUS_PATH
from .signals import IFINDEX_MAX as IFINDEX_MAX
from .signals import LINK_IFACE as LINK_IFACE
from .signals import LINK_PATH_PREFIX as LINK_PATH_PREFIX
from .signals import LOG_EVERY as LOG_EVERY
from .signals import MANAGER_IFACE as MANAGER_IFACE
from .signals import MANAGER_PATH as MANAGER_PATH
from .signals import MATCH_OWNER as MATCH_OWNER
from .signals import MATCH_PROPERTIES as MATCH_PROPERTIES
from .signals import MAX_CONCURRENT_GETS as MAX_CONCURRENT_GETS
from .signals import MAX_PENDING_SENDERS as MAX_PENDING_SENDERS
from .signals import NETWORKD as NETWORKD
from .signals import PROPERTIES_IFACE as PROPERTIES_IFACE
from .signals import BadValue as BadValue
from .signals import BusCounters as BusCounters
from .signals import BusError as BusError
from .signals import Counted as Counted
from .signals import OwnerPid as OwnerPid
from .signals import Rejected as Rejected
from .signals import Translated as Translated
from .signals import link_index as link_index
from .signals import link_path as link_path
from .signals import translate as translate
