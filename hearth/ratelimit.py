"""A token bucket (pure: time is passed in), shared by the API's rate limit (hearth/api/limits.py) and the agent
callback listener's per-source limit (hearth/agentlink/httpd.py); layer 0, so both may import it."""

from __future__ import annotations


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; time is passed in (pure)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, max(burst, 1.0)
        self.tokens, self.stamp = self.burst, now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one will be there (nothing is taken)."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
