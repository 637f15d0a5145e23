"""Which kernel objects netd-hook protects. Pure predicates over model values.

Default: every policy rule not owned by the kernel (`proto kernel`) or by networkd
(`proto static`, what networkd stamps on its own [RoutingPolicyRule]s), and every route in a
table that such a rule looks up, except main, local and default. That covers the whole VPC CNI
layout, including the strict-mode `lookup local` rule moved to priority 20 and the 32765
ENI-primary rules (see VPC-CNI-LAYOUT.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import PROTOCOLS, RESERVED_TABLES, Route, Rule

PRIORITY_MAX = 0xFFFFFFFF
Range = tuple[int, int]

# Route types worth replaying (rtnetlink.h RTN_*): unicast, blackhole, unreachable, prohibit,
# throw. local/broadcast/multicast routes are the kernel's business.
REPLAYABLE_ROUTE_TYPES = frozenset({1, 6, 7, 8, 9})


@dataclass(frozen=True, slots=True)
class Scope:
    include_priorities: tuple[Range, ...] = ((0, PRIORITY_MAX),)
    exclude_priorities: tuple[Range, ...] = ()
    include_tables: frozenset[int] | None = None  # None: every table
    exclude_tables: frozenset[int] = frozenset()
    exclude_protocols: frozenset[int] = frozenset({PROTOCOLS["kernel"], PROTOCOLS["static"]})


def _in(ranges: tuple[Range, ...], value: int) -> bool:
    return any(lo <= value <= hi for lo, hi in ranges)


def _table_ok(scope: Scope, table: int) -> bool:
    if scope.include_tables is not None and table not in scope.include_tables:
        return False
    return table not in scope.exclude_tables


def rule_in_scope(scope: Scope, rule: Rule) -> bool:
    return (
        _in(scope.include_priorities, rule.priority)
        and not _in(scope.exclude_priorities, rule.priority)
        and _table_ok(scope, rule.table)
        and rule.protocol not in scope.exclude_protocols
    )


def route_in_scope(scope: Scope, route: Route) -> bool:
    """A route that may be protected; it is protected while a protected rule looks up its table."""
    return (
        route.table not in RESERVED_TABLES
        and route.type in REPLAYABLE_ROUTE_TYPES
        and _table_ok(scope, route.table)
        and route.protocol not in scope.exclude_protocols
    )
