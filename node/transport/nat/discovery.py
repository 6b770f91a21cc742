"""NAT behaviour discovery: RFC 4787 mapping and filtering classes, found as in RFC 5780.

Mapping (RFC 5780 section 4.3): ask the server's primary address (test I), its alternate IP
on the primary port (test II) and the alternate IP and port (test III); the same mapped address
for I and II means endpoint-independent mapping, the same for II and III address-dependent,
otherwise address-and-port-dependent. With two ordinary servers instead of one RFC 5780
server, tests I and II go to the two servers and only endpoint-independent vs dependent can be
told apart (dependent is then reported as address-and-port-dependent, the safe assumption).

Filtering (section 4.4): ask for an answer from the alternate IP and port (CHANGE-REQUEST);
an answer means endpoint-independent filtering; else ask for one from the alternate port only:
an answer means address-dependent, none address-and-port-dependent. These run before the
mapping tests II and III, which send to the alternate IP and would open an address filter.

The classic names follow: no mapping is ``public`` (``firewalled`` when filtering is not
endpoint-independent), endpoint-independent mapping with the three filterings is full cone,
restricted cone and port-restricted cone, any dependent mapping is ``symmetric``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from node.transport.nat import stun
from node.transport.nat.errors import NatError, StunTimeout
from node.transport.nat.stun import Address
from node.transport.nat.stun_client import BindingSucceeded

# quick transactions for the tests that expect silence: 3 tries, ~1.75 s in all
PROBE_RTO = 0.25
PROBE_ATTEMPTS = 3
PROBE_FINAL_WAIT = 1.0


class Mapping(StrEnum):
    NONE = "none"
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Filtering(StrEnum):
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


class NatClass(StrEnum):
    PUBLIC = "public"
    FIREWALLED = "firewalled"
    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED_CONE = "port-restricted-cone"
    CONE = "cone"  # endpoint-independent mapping, filtering not measurable
    SYMMETRIC = "symmetric"
    BLOCKED = "udp-blocked"


def nat_class(mapping: Mapping, filtering: Filtering) -> NatClass:
    """The classic name for a (mapping, filtering) pair."""
    if mapping == Mapping.NONE:
        if filtering in (Filtering.ENDPOINT_INDEPENDENT, Filtering.UNKNOWN):
            return NatClass.PUBLIC
        return NatClass.FIREWALLED
    if mapping != Mapping.ENDPOINT_INDEPENDENT:
        return NatClass.SYMMETRIC
    return {
        Filtering.ENDPOINT_INDEPENDENT: NatClass.FULL_CONE,
        Filtering.ADDRESS_DEPENDENT: NatClass.RESTRICTED_CONE,
        Filtering.ADDRESS_AND_PORT_DEPENDENT: NatClass.PORT_RESTRICTED_CONE,
        Filtering.UNKNOWN: NatClass.CONE,
    }[filtering]


def classify_mapping(
    local: Address,
    first: Address,
    second: Address,
    third: Address | None,
    local_ips: frozenset[str] = frozenset(),
) -> Mapping:
    """Mapping class from the mapped addresses of tests I, II and (when run) III.

    ``local_ips`` are the host's own addresses, needed when ``local`` is a wildcard bind.
    """
    ours = first == local or (first[1] == local[1] and first[0] in local_ips)
    if ours and first == second:
        return Mapping.NONE
    if first == second:
        return Mapping.ENDPOINT_INDEPENDENT
    if third is not None and third == second:
        return Mapping.ADDRESS_DEPENDENT
    return Mapping.ADDRESS_AND_PORT_DEPENDENT


@dataclass(frozen=True, slots=True)
class NatReport:
    """What discovery found."""

    mapping: Mapping
    filtering: Filtering
    nat_class: NatClass
    public_address: Address | None
    """Our address as seen from outside (test I)."""
    local: Address
    """The local address the tests ran from."""
    method: str
    """``rfc5780`` (one server with an alternate address) or ``two-servers``."""

    @property
    def endpoint_independent(self) -> bool:
        """True when peers can reach us at ``public_address`` after we sent to anyone."""
        return self.mapping in (Mapping.NONE, Mapping.ENDPOINT_INDEPENDENT)

    def to_json(self) -> dict[str, Any]:
        pub = self.public_address
        return {
            "class": self.nat_class.value,
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "public_address": f"{pub[0]}:{pub[1]}" if pub else None,
            "method": self.method,
        }


class Binder(Protocol):
    """What discovery needs: a STUN agent's ``binding`` and its local address."""

    local: Address

    async def binding(
        self,
        dest: Address,
        *,
        change: int = 0,
        rto: float | None = None,
        attempts: int | None = None,
        final_wait: float | None = None,
    ) -> BindingSucceeded: ...


async def _probe(agent: Binder, dest: Address, change: int = 0) -> BindingSucceeded | None:
    try:
        return await agent.binding(
            dest,
            change=change,
            rto=PROBE_RTO,
            attempts=PROBE_ATTEMPTS,
            final_wait=PROBE_FINAL_WAIT,
        )
    except StunTimeout:
        return None


async def discover(
    agent: Binder,
    server: Address,
    second_server: Address | None = None,
    *,
    local_ips: frozenset[str] = frozenset(),
) -> NatReport:
    """Classify the NAT in front of ``agent``'s port; raises NatError when no server answers."""
    first = await _probe(agent, server)
    if first is None:
        if second_server is None:
            raise NatError(
                f"STUN server {server[0]}:{server[1]} did not answer; check [nat] stun_servers"
            )
        first = await _probe(agent, second_server)
        if first is None:
            return NatReport(
                Mapping.NONE, Filtering.UNKNOWN, NatClass.BLOCKED, None, agent.local, "none"
            )
        server, second_server = second_server, None
    other = first.other_address
    if other is not None and other[0] != first.source[0] and other[1] != first.source[1]:
        return await _discover_rfc5780(agent, server, first, other, local_ips)
    if second_server is None:
        raise NatError(
            f"STUN server {server[0]}:{server[1]} has no alternate address (RFC 5780); "
            "configure a second STUN server in [nat] stun_servers"
        )
    second = await _probe(agent, second_server)
    if second is None:
        raise NatError(f"STUN server {second_server[0]}:{second_server[1]} did not answer")
    mapping = classify_mapping(agent.local, first.mapped, second.mapped, None, local_ips)
    filtering = Filtering.UNKNOWN
    return NatReport(
        mapping, filtering, nat_class(mapping, filtering), first.mapped, agent.local, "two-servers"
    )


async def _discover_rfc5780(
    agent: Binder,
    server: Address,
    first: BindingSucceeded,
    other: Address,
    local_ips: frozenset[str],
) -> NatReport:
    # filtering first: once we sent to the alternate IP (mapping tests), an address-dependent
    # filter would let its answers in and look endpoint-independent
    if await _probe(agent, server, stun.CHANGE_IP | stun.CHANGE_PORT) is not None:
        filtering = Filtering.ENDPOINT_INDEPENDENT
    elif await _probe(agent, server, stun.CHANGE_PORT) is not None:
        filtering = Filtering.ADDRESS_DEPENDENT
    else:
        filtering = Filtering.ADDRESS_AND_PORT_DEPENDENT
    second = await _probe(agent, (other[0], server[1]))
    if second is None:
        raise NatError(f"STUN server's alternate address {other[0]}:{server[1]} did not answer")
    third = None
    if second.mapped != first.mapped:
        third = await _probe(agent, other)
        if third is None:
            raise NatError(f"STUN server's alternate address {other[0]}:{other[1]} did not answer")
    mapping = classify_mapping(
        agent.local, first.mapped, second.mapped, third.mapped if third else None, local_ips
    )
    return NatReport(
        mapping, filtering, nat_class(mapping, filtering), first.mapped, agent.local, "rfc5780"
    )
