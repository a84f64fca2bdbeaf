"""Per-client token buckets for the DNS server, so one client cannot starve the others.

What it is for: :class:`RateLimiter` decides, per datagram, whether a client address is
within its rate.  Memory is bounded: at most ``max_clients`` buckets, idle (refilled)
ones are evicted first.  It is deliberately generous by default so that benchmarks and
busy LANs are never throttled; loopback can be exempt.

What it must not do: do I/O or anything slow, since it runs for every UDP packet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimit", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``qps`` sustained queries per second per client address, bursts up to ``burst``."""

    qps: float = 2000.0
    burst: float = 4000.0
    exempt_loopback: bool = True
    max_clients: int = 65_536

    def __post_init__(self) -> None:
        if self.qps <= 0 or self.burst < 1 or self.max_clients < 1:
            raise ValueError(f"invalid DNS rate limit: {self!r}")


class RateLimiter:
    """Token bucket per client address."""

    def __init__(self, limit: RateLimit | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit if limit is not None else RateLimit()
        self.clock = clock
        self.dropped = 0
        # address -> [tokens, last refill time]; dicts keep insertion order for eviction.
        self._buckets: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, client: str) -> bool:
        """Take one token for ``client``; False when it is over its rate."""
        limit = self.limit
        if limit.exempt_loopback and (client.startswith("127.") or client == "::1" or client.startswith("::ffff:127.")):
            return True
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= limit.max_clients:
                self._evict(now)
            self._buckets[client] = [limit.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * limit.qps
        if tokens > limit.burst:
            tokens = limit.burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self.dropped += 1
            return False
        bucket[0] = tokens - 1.0
        return True

    def _evict(self, now: float) -> None:
        """Forget full buckets (same as new ones); if that frees too little, the oldest."""
        limit = self.limit
        full = [
            client
            for client, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * limit.qps >= limit.burst
        ]
        for client in full:
            del self._buckets[client]
        excess = len(self._buckets) - limit.max_clients * 3 // 4
        if excess > 0:
            for client in list(self._buckets)[:excess]:
                del self._buckets[client]
