"""Office networks of groups: validating CIDR ranges, and finding the group an address belongs to.

A range is stored with its bounds as 32 hex digits (:func:`bounds`), so "do two ranges overlap"
is a comparison of text on every database. Approved ranges never overlap (the exclusion
constraint on PostgreSQL, the check in :func:`billing.services.groups.add_ip_range` on SQLite),
so the one range that can hold an address is the last one starting at or before it: a
:class:`NetworkIndex` keeps the starts sorted and answers with one ``bisect``, whatever the number
of ranges.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right, insort
from collections.abc import Iterable
from dataclasses import dataclass

from billing.errors import ValidationFailed

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class NetworkRules:
    """How wide an office range may be, per family (the smallest prefix length allowed)."""

    widest_v4: int = 16
    widest_v6: int = 48


def parse_network(text: str, rules: NetworkRules, *, allow_private: bool = False) -> IPNetwork:
    """The network ``text`` names (``192.0.2.0/24``, ``2001:db8::/48``, or one address).

    Refuses, naming the field ``cidr``: what is not a network, host bits set, ranges wider than
    ``rules`` allow, and private, loopback, link-local, multicast or reserved ranges unless
    ``allow_private`` (staff allow those).
    """
    value = (text or "").strip()
    if not value:
        raise ValidationFailed("Enter a network such as 192.0.2.0/24.", field="cidr")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        message = str(exc)
        if "host bits set" in message:
            message = "the address has bits set beyond the prefix; give the network's first address"
        raise ValidationFailed(f"This is not an IP network: {message}.", field="cidr") from exc
    widest = rules.widest_v4 if network.version == 4 else rules.widest_v6
    if network.prefixlen < widest:
        raise ValidationFailed(
            f"This range is too wide: IPv{network.version} ranges may be /{widest} at most.",
            field="cidr",
        )
    if not allow_private and not network.is_global:
        raise ValidationFailed(
            "Private, local and reserved ranges are refused (staff can allow one).", field="cidr"
        )
    return network


def bounds(network: IPNetwork) -> tuple[str, str]:
    """First and last address of ``network`` as 32 hex digits each (comparable as text)."""
    first = int(network.network_address)
    last = int(network.broadcast_address)
    return f"{first:032x}", f"{last:032x}"


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def _address_number(address: str) -> tuple[int, int]:
    """(IP version, the address as an integer); an IPv4-mapped IPv6 address counts as IPv4.

    ``inet_pton`` parses strictly (no ``127.1`` or octal forms) and several times faster than
    ``ipaddress``; ``ValueError`` for anything that is not an address.
    """
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])
    except OSError as exc:
        raise ValueError(f"not an IP address: {address!r}") from exc
    if packed[:12] == _V4_MAPPED:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def normalised_address(address: str) -> str:
    """``address`` in its canonical text form (IPv6 compressed and lower-case, as RFC 5952 writes
    it); ``ValueError`` for anything that is not a plain IPv4 or IPv6 address.

    As strict as ``ipaddress`` (no ``127.1``, no leading zeros, no zone id) and several times
    faster: this runs on every anonymous entitlement check.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, address))
        except OSError:
            continue
    raise ValueError(f"not an IP address: {address!r}")


@dataclass(frozen=True, order=True)
class _Range:
    start: int
    end: int
    group_id: int


class NetworkIndex:
    """Non-overlapping ranges of each family, sorted by their first address.

    ``find`` is a binary search; ``replace_group`` swaps one group's ranges (after a change to
    that group) without touching the others.
    """

    def __init__(self, ranges: Iterable[tuple[int, str, str, int]] = ()) -> None:
        self._ranges: dict[int, list[_Range]] = {4: [], 6: []}
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        for version, first, last, group_id in ranges:
            self._ranges[version].append(_Range(int(first, 16), int(last, 16), group_id))
        for version in (4, 6):
            self._reindex(version)

    def __len__(self) -> int:
        return len(self._ranges[4]) + len(self._ranges[6])

    def _reindex(self, version: int) -> None:
        self._ranges[version].sort()
        self._starts[version] = [r.start for r in self._ranges[version]]

    def find(self, address: str) -> int | None:
        """The id of the group whose range holds ``address`` (a valid IP address), or None."""
        version, number = _address_number(address)
        at = bisect_right(self._starts[version], number) - 1
        if at < 0:
            return None
        found = self._ranges[version][at]
        return found.group_id if number <= found.end else None

    def replace_group(self, group_id: int, ranges: Iterable[tuple[int, str, str]]) -> None:
        """Forget ``group_id``'s ranges and put ``ranges`` (version, first, last) in their place."""
        for version in (4, 6):
            kept = [r for r in self._ranges[version] if r.group_id != group_id]
            if len(kept) != len(self._ranges[version]):
                self._ranges[version] = kept
                self._reindex(version)
        for version, first, last in ranges:
            insort(self._ranges[version], _Range(int(first, 16), int(last, 16), group_id))
            self._starts[version] = [r.start for r in self._ranges[version]]
