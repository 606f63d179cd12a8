"""A token bucket: `rate` events per second sustained, `burst` at once.

Time is passed in (monotonic seconds), so that the bucket is a value a test can drive.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens added per second
    burst: float  # the most tokens it holds
    tokens: float = field(default=-1.0)  # starts full
    at: float = 0.0  # when `tokens` was last brought up to date

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if there are that many now."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = max(self.at, now)


@dataclass(slots=True)
class Limiter:
    """A connection's events: beyond its bucket an event is refused; a connection whose
    refusals keep coming (more than a whole burst of them, draining at the sustained
    rate) is abusive and gets disconnected."""

    allowed: TokenBucket
    patience: TokenBucket  # tokens are refusals the connection may still get away with

    @classmethod
    def of(cls, rate: float, burst: float, now: float) -> Limiter:
        return cls(TokenBucket(rate, burst, at=now), TokenBucket(rate, burst, at=now))

    def check(self, now: float) -> bool | None:
        """True: go on; False: refuse this event; None: refuse and disconnect."""
        if self.allowed.take(now):
            return True
        return False if self.patience.take(now) else None
