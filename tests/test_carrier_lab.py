"""Carrier loss on a managed secondary ENI (an ENA reset) in the node-like lab: issue 11, item 3.

`ip link set vpc1 down` takes eth1's carrier away (vpc1 is its veth peer, the lab's stand-in for
the VPC side), `ip link set vpc1 up` gives it back. What networkd does then differs by version,
and each test asserts what the kernel shows for its version:

- networkd 249 (Ubuntu 22.04), src/network/networkd-link.c `link_carrier_lost()`:
  `link_drop_config()` takes networkd's own address off eth1 (the kernel then flushes eth1's
  table routes, without a notification: netd-hook sees the address's local route go and puts
  them back, flagged `linkdown`), and, since the link is not pending/initialized,
  `link_drop_foreign_config()`, whose `manager_drop_foreign_routing_policy_rules()` deletes every
  foreign rule of the node (every ENI's pods, manager-wide). The link stays `configured`, so
  netd-hook repairs at once, eth1's ENI-primary rule (`from 10.0.1.10 lookup 2`) included:
  while its address is away no packet can match it, and it is there when the address returns
  (before 0.5.0 the liveness gate held it back until then). When the carrier returns,
  `link_carrier_gained()` requests the static configuration again (the link goes `configuring`,
  then `configured`): no second wipe; netd-hook re-reads the kernel once eth1 settles and puts
  back whatever the configure took.
- networkd 252 (`link_carrier_lost_impl()`): only networkd's own configuration is dropped (the
  address, hence the table routes, put back as above); not one rule is deleted. The return is the same as on 249.
- A reconfigure or a restart while the carrier is away leaves eth1 `configuring` (no carrier:
  its address cannot be configured): networkd's wipe then waits for `[replay] stuck_ms`
  (default 5 s) before netd-hook repairs it, on every ENI, since the wipe is manager-wide.

Every verdict reads the kernel (`ip -j`); outages are measured by an independent netlink
observer in the lab's namespace (`LabObserver`), and printed (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netd_hook.adapters import netlink
from tests.daemon import Daemon, prefs, wait_until
from tests.lab import NETWORKD, Lab, require_networkd_249
from tests.test_daemon_lab import healthy, vpc_node

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(NETWORKD), reason="needs root and systemd-networkd"),
]

State = tuple[frozenset[Any], frozenset[Any]]  # healthy(): (rules, ENI table routes)
ENI_TABLES = frozenset({2, 3})
VICTIM = "10.1.1.6"  # a pod on eth1 the CNI deletes while the carrier is away
DEFAULT_STUCK_S = 5.0  # [replay] stuck_ms's default: the tests run the daemon with no configuration
LOSS_TIMEOUT = 10.0
BACK_TIMEOUT = 10.0


@pytest.fixture
def node(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The VPC CNI lab (tests/test_daemon_lab.py's vpc_node) on networkd 252 or Ubuntu 22.04's 249,
    socket-activated, with udev."""
    kw = {"networkd": require_networkd_249()} if request.param == "249" else {}
    with vpc_node(**kw) as lab:
        yield lab


@pytest.fixture
def daemon(node: Lab, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(node, tmp_path / "state").start()  # no configuration: stuck_ms is the default
    yield d
    d.close()


# ---------------------------------------------------------------------------------- observer

class LabObserver:
    """An independent netlink observer in the lab's network namespace (`Lab.netns_socket`): a
    thread records every RTM_{NEW,DEL}{RULE,ROUTE} as tests/node.py's Observer does inside a
    booted node, ``[monotonic_ns, "new"|"del", "rule"|"route", nlmsg_pid, key]``; a rule's key is
    ``[family, priority, src, srclen, dst, dstlen, table, fwmark, fwmask]``, a route's
    ``[family, table, dst, dstlen, gateway, oif]``. Its own decoder (a few structs), not the
    daemon's."""

    def __init__(self, lab: Lab) -> None:
        s = lab.netns_socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, netlink.SO_RCVBUFFORCE, 64 << 20)
        s.bind((0, 0))
        for group in (netlink.RTNLGRP_IPV4_RULE, netlink.RTNLGRP_IPV6_RULE, netlink.RTNLGRP_IPV4_ROUTE,
                      netlink.RTNLGRP_IPV6_ROUTE):
            s.setsockopt(netlink.SOL_NETLINK, 1, group)  # NETLINK_ADD_MEMBERSHIP
        self.sock = s
        self._stop_r, self._stop_w = os.pipe()
        self._events: list[list[Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="lab-observer", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            r, _, _ = select.select([self.sock, self._stop_r], [], [])
            if self._stop_r in r:
                return
            try:
                data = self.sock.recv(1 << 22)
            except OSError as e:  # ENOBUFS: the figures would be wrong, say so
                with self._lock:
                    self._events.append([time.monotonic_ns(), "overrun", str(e)])
                continue
            now = time.monotonic_ns()
            out = list(_decode(data, now))
            with self._lock:
                self._events.extend(out)

    def events(self, since: int = 0) -> list[list[Any]]:
        with self._lock:
            return [e for e in self._events if e[0] >= since]

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self.sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def __enter__(self) -> LabObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attrs(body: bytes, off: int) -> dict[int, bytes]:
    a = {}
    while off + 4 <= len(body):
        ln, ty = struct.unpack_from("=HH", body, off)
        if ln < 4:
            break
        a[ty & 0x3FFF] = body[off + 4:off + ln]
        off += (ln + 3) & ~3
    return a


def _addr(v: bytes | None, fam: int) -> str | None:
    return socket.inet_ntop(fam, v) if v is not None else None


def _u32(v: bytes | None) -> int | None:
    return struct.unpack("=I", v)[0] if v is not None else None


def _decode(data: bytes, now: int) -> Iterator[list[Any]]:
    off = 0
    while off + 16 <= len(data):
        ln, ty, _, _, pid = struct.unpack_from("=IHHII", data, off)
        if ln < 16:
            return
        body = data[off + 16:off + ln]
        off += (ln + 3) & ~3
        if ty in (netlink.RTM_NEWRULE, netlink.RTM_DELRULE):
            fam, dl, sl, _, table = struct.unpack_from("=BBBBB", body, 0)
            a = _attrs(body, 12)  # struct fib_rule_hdr is 12 bytes
            key = [fam, _u32(a.get(6)) or 0, _addr(a.get(2), fam), sl, _addr(a.get(1), fam), dl,
                   _u32(a.get(15)) or table, _u32(a.get(10)), _u32(a.get(16))]
            yield [now, "new" if ty == netlink.RTM_NEWRULE else "del", "rule", pid, key]
        elif ty in (netlink.RTM_NEWROUTE, netlink.RTM_DELROUTE):
            fam, dl, _, _, table = struct.unpack_from("=BBBBB", body, 0)
            a = _attrs(body, 12)  # struct rtmsg is 12 bytes
            key = [fam, _u32(a.get(15)) or table, _addr(a.get(1), fam), dl, _addr(a.get(5), fam), _u32(a.get(4))]
            yield [now, "new" if ty == netlink.RTM_NEWROUTE else "del", "route", pid, key]


def rule_deletions(events: Iterable[list[Any]], port: int | None = None) -> list[list[Any]]:
    return [e for e in events if e[1] == "del" and e[2] == "rule" and (port is None or e[3] == port)]


def last_protected_add(events: Iterable[list[Any]]) -> int | None:
    """When the last rule, or route of an ENI table, was added (ns): the moment the kernel was
    whole again, once the oracle has said it is."""
    times = [e[0] for e in events if e[1] == "new" and (e[2] == "rule" or e[4][1] in ENI_TABLES)]
    return max(times, default=None)


def ms(a: int | None, b: int | None) -> float | None:
    return None if a is None or b is None else (b - a) / 1e6


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


# ---------------------------------------------------------------------------------- helpers

def foreign(state: State) -> frozenset[Any]:
    """The rules networkd calls foreign: every rule whose protocol is not the kernel's."""
    return frozenset(r for r in state[0] if dict(r).get("protocol") != '"kernel"')


def eni_primary_rule(lab: Lab, index: int = 1) -> frozenset[Any]:
    """The 32765 `from <ENI primary address> lookup <table>` rule of ENI `index`."""
    e = lab.enis[index]
    return frozenset(r for r in healthy(lab)[0]
                     if dict(r).get("priority") == "32765" and dict(r).get("src") == json.dumps(e.ip))


def table_ipv4_routes(state: State, table: int) -> frozenset[Any]:
    """ENI table `table`'s IPv4 routes: the kernel flushes them when the ENI's address goes."""
    return frozenset(r for r in state[1] if r[0] == table and ":" not in str(r[1:]))


def without_pod(state: State, ip: str) -> State:
    quoted = json.dumps(ip)  # as the address appears in an `ip -j rule` row
    return frozenset(r for r in state[0] if quoted not in str(r)), state[1]


def ipv4_addresses(lab: Lab, dev: str) -> list[str]:
    return [a["local"] for link in lab.ip_json("-4", "addr", "show", "dev", dev) for a in link.get("addr_info", [])]


def wait_lost_carrier(lab: Lab, link: str = "eth1", timeout: float = LOSS_TIMEOUT) -> None:
    """Until networkd has handled the carrier loss (it logs it, and takes its address away)."""
    wait_until(lambda: f"{link}: Lost carrier" in lab.networkd_log() and not ipv4_addresses(lab, link),
               timeout, f"networkd to handle {link}'s carrier loss", interval=0.01)


def wait_state(lab: Lab, want: State, d: Daemon, what: str, timeout: float = BACK_TIMEOUT) -> float:
    """Until the kernel has exactly `want`; returns when it was seen (monotonic)."""
    try:
        wait_until(lambda: healthy(lab) == want, timeout, what, interval=0.02)
    except AssertionError:
        rules, routes = healthy(lab)
        raise AssertionError(
            f"{what}: rules missing {prefs(want[0] - rules)}, extra {prefs(rules - want[0])}; "
            f"routes missing {sorted(want[1] - routes)}\nlog:\n{d.log()[-6000:]}") from None
    return time.monotonic()


def flavours(*names: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("node", names, indirect=True)


def flavour_of(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["node"])


# ---------------------------------------------------------------------------------- tests

@flavours("252", "249")
def test_carrier_loss_and_return_of_a_secondary_eni(node: Lab, daemon: Daemon, request: pytest.FixtureRequest) -> None:
    """eth1 loses its carrier for a second, the CNI deletes a pod of eth1 meanwhile, the carrier
    comes back. 249: the loss wipes every foreign rule (networkd's port), netd-hook puts them
    back at once, eth1's ENI-primary rule too (its address is away); 252: no rule is deleted.
    Both: eth1's table routes go with its address and are put back during the loss, and
    everything is back once the carrier is; the pod the CNI deleted stays deleted."""
    flavour = flavour_of(request)
    want = healthy(node)
    port = node.networkd_socket_port
    held = eni_primary_rule(node)
    flushed = table_ipv4_routes(want, 2)
    assert len(held) == 1 and len(flushed) == 2, (held, want[1])
    # what the kernel has while the carrier is away, once netd-hook has done what it can: 249
    # wipes every foreign rule and networkd deletes eth1's foreign IPv6 route, netd-hook puts them
    # all back, the rule keyed on eth1's address (away) too; 252 deletes nothing. Both: the kernel
    # flushed eth1's IPv4 table routes with its address without a notification; netd-hook sees
    # the address's local route go, re-reads the kernel and puts them back (`linkdown`).
    during = want
    with LabObserver(node) as obs:
        mark = daemon.mark()
        t_down = time.monotonic_ns()
        node.run("ip", "link", "set", "vpc1", "down")
        wait_lost_carrier(node)
        if flavour == "249":
            wait_until(lambda: len(rule_deletions(obs.events(t_down), port)) >= len(foreign(want)), LOSS_TIMEOUT,
                       "249's carrier-loss wipe", interval=0.01)
        wait_state(node, during, daemon, "repair during the carrier loss")
        daemon.wait_log(r"eth1 lost an address: the kernel may have dropped the protected routes", start=mark)
        assert not ipv4_addresses(node, "eth1") and held <= healthy(node)[0]  # back before its address
        time.sleep(1.0)  # a late wipe, or a late repair, would show up here
        assert healthy(node) == during, (prefs(want[0] - healthy(node)[0]), want[1] - healthy(node)[1])
        assert node.link_states()["eth1"] == "configured"  # never busy: nothing holds a repair back
        events = obs.events(t_down)
        assert not [e for e in events if e[0] == "overrun"], "the observer overran: figures unreliable"
        deleted = rule_deletions(events)
        # 249 wipes every foreign rule through its socket, and nothing else deletes one; 252 none
        expected = len(foreign(want)) if flavour == "249" else 0
        assert len(deleted) == expected and all(e[3] == port for e in deleted), (flavour, deleted[:3])
        assert not ipv4_addresses(node, "eth1")
        loss_repair = ms(deleted[0][0], last_protected_add(events)) if deleted else None
        daemon_missing_during = daemon.status().missing

        # CNI DEL of a pod on eth1 while the carrier is away: its rules, then its veth
        node.del_pod(VICTIM)
        final = without_pod(want, VICTIM)
        assert final[0] != want[0]
        time.sleep(0.3)

        t_up = time.monotonic_ns()
        mark_up = daemon.mark()
        node.run("ip", "link", "set", "vpc1", "up")
        node.wait_state("eth1", "configured")
        wait_state(node, final, daemon, "whole after the carrier returned")
        # networkd configured eth1 again (configuring, then configured): netd-hook re-read the kernel
        daemon.wait_log(r"verify \(reconfigure:eth1\)", start=mark_up)
        time.sleep(0.5)  # a late replay of the CNI's deletion would show up here
        assert healthy(node) == final, daemon.log()
        after = obs.events(t_up)
    # the return: no second wipe on either version (link_carrier_gained() drops nothing foreign)
    assert rule_deletions(after, port) == [], rule_deletions(after, port)[:3]
    back = ms(t_up, last_protected_add(after))
    outage = ms(t_down, last_protected_add(after))
    st = daemon.status()
    assert st.forgotten.total == 2 and st.forgotten.doubt is None, st.forgotten
    assert not [ln for ln in daemon.lines[mark:] if "Traceback" in ln]
    print(f"\ncarrier loss, networkd {flavour}: rules deleted by networkd {len(deleted)}; "
          f"repaired during the loss in {fmt(loss_repair)} (first deletion -> last rule back), "
          f"put back while the carrier is away: {len(held) if flavour == '249' else 0} rule keyed on "
          f"eth1's address + {len(flushed)} table routes (daemon's status said missing={daemon_missing_during}); "
          f"carrier return -> whole {fmt(back)}; carrier down -> whole {fmt(outage)} "
          f"(carrier away {(t_up - t_down) / 1e9:.1f} s)")


@pytest.mark.parametrize(("node", "trigger"), [("252", "reconfigure"), ("249", "reconfigure"), ("249", "restart")],
                         indirect=["node"])
def test_a_wipe_while_the_carrier_is_away_is_chased_at_once(node: Lab, daemon: Daemon, trigger: str,
                                                             request: pytest.FixtureRequest) -> None:
    """A reconfigure (or a networkd restart) during the ENA reset: eth1 cannot finish
    configuring without carrier and stays `configuring`; networkd's wipe (every ENI's rules) is
    chased: put back at once, eth1's 32765 rule too, while eth1 is still configuring, not
    after stuck_ms. Once eth1 has been busy for stuck_ms (default 5 s) the kernel is re-read
    (whatever was not chased); `status` names eth1 as stuck; when the carrier returns everything
    is back."""
    flavour = flavour_of(request)
    want = healthy(node)
    port = node.networkd_socket_port
    node.run("ip", "link", "set", "vpc1", "down")
    wait_lost_carrier(node)
    wait_state(node, want, daemon, "the carrier loss handled")  # see the test above
    during = want  # after the repair: every rule (eth1's 32765 one too, its address away) and route
    with LabObserver(node) as obs:
        mark = daemon.mark()
        t0 = time.monotonic_ns()
        if trigger == "reconfigure":
            node.reconfigure("eth1")
        else:
            node.stop_networkd()
            node.start_networkd(wait=False)
        wait_until(lambda: len(rule_deletions(obs.events(t0), port)) >= len(foreign(want)),
                   LOSS_TIMEOUT, f"the wipe after the {trigger}", interval=0.01)
        first = rule_deletions(obs.events(t0), port)[0][0]
        wait_until(lambda: healthy(node)[0] >= during[0], 2.0, "the wipe's rules chased back", interval=0.01)
        chased = ms(first, last_protected_add(obs.events(t0)))
        assert node.link_states()["eth1"] == "configuring"  # put back while networkd is still at it
        # the trigger is networkd's (reconfigure, restart), or `networkd` when its deletions were read
        # before its `configuring` signal (two sockets: networkd then looked settled)
        assert daemon.repairs(mark), daemon.log()
        wait_state(node, during, daemon, "the repair after stuck_ms", timeout=DEFAULT_STUCK_S + 3)
        events = obs.events(t0)
        repaired = ms(first, last_protected_add(events))
        assert node.link_states()["eth1"] == "configuring"
        wait_until(lambda: "eth1" in daemon.status().networkd.stuck, 5, "eth1 named as stuck")
        t_up = time.monotonic_ns()
        node.run("ip", "link", "set", "vpc1", "up")
        node.wait_state("eth1", "configured")
        wait_state(node, want, daemon, "whole once the carrier returned")
        time.sleep(0.5)
        assert healthy(node) == want
        back = ms(t_up, last_protected_add(obs.events(t_up)))
    assert chased is not None and chased < 0.5 * DEFAULT_STUCK_S * 1000, chased
    assert repaired is not None and repaired <= (DEFAULT_STUCK_S + 2) * 1000, repaired
    wait_until(lambda: daemon.status().networkd.stuck == {}, 5, "eth1 no longer stuck")
    st = daemon.status()
    assert st.forgotten.total == 0, st.forgotten
    assert not [ln for ln in daemon.lines[mark:] if "Traceback" in ln]
    print(f"\n{trigger} during a carrier loss, networkd {flavour}: {len(rule_deletions(events, port))} rules "
          f"deleted by networkd; every ENI's rules back in {fmt(chased)} while eth1 was configuring "
          f"(first deletion -> last rule back), everything in {fmt(repaired)} (stuck_ms {DEFAULT_STUCK_S:g} s); "
          f"carrier return -> whole {fmt(back)}")
