"""DNS correlation: which name did this machine look up to reach an IP?

A connection with no SNI (ECH with a shared outer name aside, plain TCP, old clients) can still
be named by the DNS answers that preceded it. The table maps an address to the question names
whose answers held it, newest first. It is bounded twice: entries older than ``max_age``
seconds of packet time are forgotten (a DNS answer goes stale; our observations carry no TTL,
and a long-lived connection keeps its name from its own first packet), and the table keeps at
most ``max_entries`` (address, name) pairs, evicting the least recently answered addresses.
Pairs, not addresses, because pairs are what cost memory: an address keeps up to
:data:`MAX_NAMES_PER_ADDRESS` names, and CDN and shared-hosting addresses collect them over
hours, so a bound on addresses alone let the table grow fourfold long after it was "full".
Forgetting means dropping: each answer learned drops the addresses at the old end of the table
whose newest answer has gone stale, so an agent holds only the last ``max_age`` of answers, not
``max_entries`` of them gathered over days.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

MAX_NAMES_PER_ADDRESS = 4


class DnsCorrelator:
    """Learns address -> names from DNS answers; answers ``name_for(ip)``."""

    def __init__(self, *, max_entries: int = 65536, max_age: float = 3600.0) -> None:
        self.max_entries = max_entries
        """(address, name) pairs held at most."""
        self.max_age = max_age
        # address -> (name, time last answered, name, time, ...), oldest answer first; a flat
        # tuple, not a dict, because most addresses hold one name and a dict costs 200 bytes
        # more (about 12 MB when the table is full). Least recently answered address first.
        self._table: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self.evicted = 0
        """Addresses dropped to stay within ``max_entries``."""
        self.expired = 0
        """Addresses dropped because their newest answer was older than ``max_age``."""
        self._pairs = 0

    def __len__(self) -> int:
        """Addresses held."""
        return len(self._table)

    @property
    def pairs(self) -> int:
        """(address, name) pairs held: what :attr:`max_entries` bounds."""
        return self._pairs

    def learn(self, qname: str, addresses: Iterable[str], ts: float) -> None:
        """Remember that the answer to ``qname`` at time ``ts`` held ``addresses``."""
        table = self._table
        for address in addresses:
            entry = table.get(address)
            if entry is None:
                table[address] = (qname, ts)
                self._pairs += 1
            else:
                table.move_to_end(address)
                names = entry[0::2]
                if qname in names:
                    at = 2 * names.index(qname)
                    entry = entry[:at] + entry[at + 2 :]
                else:
                    self._pairs += 1
                entry += (qname, ts)
                if len(entry) > 2 * MAX_NAMES_PER_ADDRESS:
                    entry = entry[2:]
                    self._pairs -= 1
                table[address] = entry
            while self._pairs > self.max_entries and table:
                _address, dropped = table.popitem(last=False)
                self._pairs -= len(dropped) // 2
                self.evicted += 1
        self._forget_stale(ts)

    def _forget_stale(self, now: float) -> None:
        # The table is in answer order, so the stale addresses are at the front and this costs
        # one look per answer. Packet time that goes backwards (merged captures) only makes it
        # stop early and keep a few stale ones for later.
        table = self._table
        cutoff = now - self.max_age
        while table:
            address = next(iter(table))
            entry = table[address]
            if max(entry[1::2]) >= cutoff:
                return
            del table[address]
            self._pairs -= len(entry) // 2
            self.expired += 1

    def names_for(self, address: str, now: float) -> list[str]:
        """Names answered with ``address`` within ``max_age`` of ``now``, newest first."""
        entry = self._table.get(address)
        if not entry:
            return []
        cutoff = now - self.max_age
        answered: list[tuple[float, str]] = sorted(
            zip(entry[1::2], entry[0::2], strict=True),
            key=lambda pair: -pair[0],
        )
        return [name for ts, name in answered if ts >= cutoff]

    def name_for(self, address: str, now: float) -> str | None:
        """The newest name answered with ``address``, or None."""
        names = self.names_for(address, now)
        return names[0] if names else None
