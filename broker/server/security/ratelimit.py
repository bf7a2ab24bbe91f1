"""Per-client rate limits (token buckets), answered with 429 and ``Retry-After``.

Per node and in memory, like Vault's rate-limit quotas: with N nodes behind a balancer a
client gets up to N times the rate. The buckets of idle clients are dropped, so memory
stays bounded by the number of clients active in the last minute.
"""

from __future__ import annotations

import math
import time

from broker.exceptions import TooManyRequests

_IDLE_SECONDS = 60.0


class RateLimiter:
    def __init__(self, rate: float, burst: int = 0) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, math.ceil(rate)))
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last seen)
        self._next_prune = time.monotonic() + _IDLE_SECONDS

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, what: str) -> None:
        """Spend one request for ``key`` or raise TooManyRequests with the wait."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise TooManyRequests(
                f"request rate limit exceeded for this {what}", (1.0 - tokens) / self.rate
            )
        self._buckets[key] = (tokens - 1.0, now)
        if now >= self._next_prune:
            self._prune(now)

    def _prune(self, now: float) -> None:
        self._next_prune = now + _IDLE_SECONDS
        stale = [k for k, (_, last) in self._buckets.items() if now - last > _IDLE_SECONDS]
        for key in stale:
            del self._buckets[key]
