"""DNS correlation: which name did this machine look up to reach an IP?

A connection with no SNI (ECH with a shared outer name aside, plain TCP, old clients) can still
be named by the DNS answers that preceded it. The table maps an address to the question names
whose answers held it, newest first. It is bounded twice: entries older than ``max_age``
seconds of packet time are forgotten (a DNS answer goes stale; our observations carry no TTL,
and a long-lived connection keeps its name from its own first packet), and the table keeps at
most ``max_entries`` addresses, evicting the least recently answered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

MAX_NAMES_PER_ADDRESS = 4


class DnsCorrelator:
    """Learns address -> names from DNS answers; answers ``name_for(ip)``."""

    def __init__(self, *, max_entries: int = 65536, max_age: float = 3600.0) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        # address -> {name: time last answered}, least recently answered address first.
        self._table: OrderedDict[str, dict[str, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._table)

    def learn(self, qname: str, addresses: Iterable[str], ts: float) -> None:
        """Remember that the answer to ``qname`` at time ``ts`` held ``addresses``."""
        table = self._table
        for address in addresses:
            names = table.get(address)
            if names is None:
                names = table[address] = {}
                if len(table) > self.max_entries:
                    table.popitem(last=False)
                    self.evicted += 1
            else:
                table.move_to_end(address)
            names.pop(qname, None)
            names[qname] = ts
            while len(names) > MAX_NAMES_PER_ADDRESS:
                del names[next(iter(names))]

    def names_for(self, address: str, now: float) -> list[str]:
        """Names answered with ``address`` within ``max_age`` of ``now``, newest first."""
        names = self._table.get(address)
        if not names:
            return []
        cutoff = now - self.max_age
        return [n for n, ts in sorted(names.items(), key=lambda kv: -kv[1]) if ts >= cutoff]

    def name_for(self, address: str, now: float) -> str | None:
        """The newest name answered with ``address``, or None."""
        names = self.names_for(address, now)
        return names[0] if names else None
