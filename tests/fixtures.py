"""Plain-data builders for the VPC CNI layout (VPC-CNI-LAYOUT.md), shared by unit tests."""

from __future__ import annotations

from netd_hook.core.model import AF_INET, Route, Rule


def pod_rules(ip: str, table: int | None) -> list[Rule]:
    rules = [Rule(AF_INET, 512, 254, dst=f"{ip}/32")]
    if table is not None:
        rules.append(Rule(AF_INET, 1536, table, src=f"{ip}/32"))
    return rules


def eni_routes(index: int) -> list[Route]:
    gw = f"10.0.{index}.1"
    return [
        Route(AF_INET, index + 1, f"{gw}/32", oif=f"eth{index}", scope=253),
        Route(AF_INET, index + 1, "0.0.0.0/0", oif=f"eth{index}", gateway=gw),
    ]


NODE_RULES = [
    Rule(AF_INET, 20, 255),  # strict mode: `from all lookup local` moved from 0 to 20
    Rule(AF_INET, 1024, 254, fwmark=0x80, fwmask=0x80),
    Rule(AF_INET, 32765, 2, src="10.0.1.10/32"),  # ENI primary address, CNI >= 1.20
]
KERNEL_RULES = [
    Rule(AF_INET, 0, 255, protocol=2),
    Rule(AF_INET, 32766, 254, protocol=2),
    Rule(AF_INET, 32767, 253, protocol=2),
]
NETWORKD_RULE = Rule(AF_INET, 100, 10, src="192.168.0.0/16", protocol=4)

