"""When to ask an ACME CA for a domain's certificate: pure decisions over a domain's record, no I/O.

A domain is issued a certificate once, then renewed when a third of its lifetime remains (a
little earlier for some domains than others, so that certificates issued together do not all
renew in the same minute). A failure (of the preflight or at the CA) pushes the next try back
exponentially, up to a day; CA attempts are capped per domain per hour, well under the CA's own
failed-authorization limit (Let's Encrypt: 5 per hour per account and name), so that lbsolo is
never why a domain gets locked out. A preflight that fails costs no CA attempt.

What it must not do: read clocks, files or the network; callers pass `now` and the record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_MAX",
    "CA_ATTEMPTS_PER_HOUR",
    "CertRecord",
    "Step",
    "attempts_in_window",
    "backoff",
    "is_public_name",
    "next_try",
    "renew_at",
]

BACKOFF_BASE = 60.0  # seconds after the first failure
BACKOFF_MAX = 86400.0  # never more than a day between two tries
CA_ATTEMPTS_PER_HOUR = 3  # orders sent to the CA per domain per hour
RENEW_JITTER = 0.02  # renewals spread over this share of a certificate's lifetime
HOUR = 3600.0

# Names no public CA will ever issue for (RFC 6761, RFC 8375 and common private suffixes).
_PRIVATE_SUFFIXES = ("localhost", "test", "local", "internal", "invalid", "example", "home.arpa", "lan", "localdomain")


class Step(StrEnum):
    """What is being done for a domain, as `lbsolo certs` shows it."""

    WAITING = "waiting"  # no certificate yet, the next try is scheduled
    VALID = "valid"  # a certificate is served; renewal is scheduled
    ISSUING = "issuing"  # a preflight or an order is running now


@dataclass
class CertRecord:
    """What lbsolo knows of one domain's ACME certificate (kept as JSON beside the certificate)."""

    domain: str
    issuer: str = ""
    not_before: float = 0.0  # of the certificate served now (0: none yet)
    not_after: float = 0.0
    last_attempt: float = 0.0  # when the last try (preflight or order) started
    last_success: float = 0.0
    last_error: str = ""
    failures: int = 0  # tries failed in a row since the last success
    ca_attempts: list[float] = field(default_factory=list)  # when orders were sent to the CA (last hour kept)
    wanted_at: float = 0.0  # a renewal asked by hand (`certs:renew`): due now, whatever the expiry

    def to_dict(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "issuer": self.issuer,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "last_attempt": self.last_attempt,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "failures": self.failures,
            "ca_attempts": list(self.ca_attempts),
            "wanted_at": self.wanted_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CertRecord:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)  # type: ignore[arg-type]

    @property
    def has_certificate(self) -> bool:
        return self.not_after > 0


def renew_at(domain: str, not_before: float, not_after: float) -> float:
    """When a certificate valid from `not_before` to `not_after` is renewed: when a third of its
    lifetime remains, brought forward by up to RENEW_JITTER of it, the same amount for the same
    domain (a hash, not a random draw: a restart does not move it)."""
    lifetime = max(0.0, not_after - not_before)
    spread = int.from_bytes(hashlib.sha256(domain.encode()).digest()[:4], "big") / 2**32
    return not_after - lifetime / 3 - lifetime * RENEW_JITTER * spread


def backoff(failures: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX) -> float:
    """Seconds to wait after `failures` failed tries in a row: base, 2 base, 4 base ... up to `cap`."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2 ** min(failures - 1, 32))


def attempts_in_window(attempts: Iterable[float], now: float, window: float = HOUR) -> list[float]:
    """The CA attempts made within `window` seconds before `now`, oldest first."""
    return sorted(t for t in attempts if now - window < t <= now)


def next_try(record: CertRecord, now: float, per_hour: int = CA_ATTEMPTS_PER_HOUR) -> float:
    """The earliest time the next try for `record`'s domain may start (<= now: due now).

    Renewal time for a certificate not asked again by hand; backoff after failures; and the
    hourly cap on CA attempts (the next one is allowed once the oldest leaves the hour).
    """
    if record.has_certificate and record.wanted_at <= record.last_success:
        due = renew_at(record.domain, record.not_before, record.not_after)
    else:
        due = now
    if record.failures:
        due = max(due, record.last_attempt + backoff(record.failures))
    recent = attempts_in_window(record.ca_attempts, now)
    if per_hour > 0 and len(recent) >= per_hour:
        due = max(due, recent[-per_hour] + HOUR)
    return due


def is_public_name(name: str) -> bool:
    """Whether a public ACME CA could issue for `name` over HTTP-01: a DNS name with a dot, no
    wildcard, not an address, not under a special-use or private suffix."""
    name = name.lower().rstrip(".")
    if not name or "." not in name or name.startswith("*.") or "*" in name:
        return False
    if name.replace(".", "").isdigit() or ":" in name:
        return False
    return not any(name == s or name.endswith("." + s) for s in _PRIVATE_SUFFIXES)
