"""When to ask an ACME CA for a domain's certificate: pure decisions over a domain's record, no I/O.

A domain is issued a certificate once, then renewed when a third of its lifetime remains (a
little earlier for some domains than others, so that certificates issued together do not all
renew in the same minute). A failure (of the preflight or at the CA) pushes the next try back
exponentially, up to a day; CA attempts are capped per domain per hour, well under the CA's own
failed-authorization limit (Let's Encrypt: 5 per hour per account and name), so that lbsolo is
never why a domain gets locked out. A preflight that fails costs no CA attempt.

After a failed authorization at the CA, the next tries go to the staging CA (as Caddy does: its
limits are far higher, and its certificates are thrown away) until one succeeds there; then one
try at production. Staging orders are not counted against the production hourly cap.

Each domain is validated by one challenge at a time, HTTP-01 (port 80) or TLS-ALPN-01 (the HTTPS
listener, port 443): the one that worked last, HTTP-01 at first. A try that fails in a way the
other challenge may not (its preflight, the CA's validation, the CA offering no such challenge)
makes the next try use the other one, when the daemon can answer both; the one that works is kept
with the record.

A certificate with fewer than EXPIRY_WARNING seconds left (no renewal has succeeded) raises
`cert.expiring` once per certificate per day, and `cert.expired` once it has expired. An app
serving a public name turns its HTTPS redirect on with its first certificate, unless its owner
chose (`apps:https --no-redirect`).

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
    "EXPIRY_WARNING",
    "Ca",
    "CertRecord",
    "Challenge",
    "Step",
    "after_attempt",
    "after_challenge",
    "attempts_in_window",
    "backoff",
    "ca_for",
    "challenge_for",
    "expires_soon",
    "expiry_alert",
    "is_public_name",
    "next_try",
    "redirect_by_default",
    "renew_at",
]

BACKOFF_BASE = 60.0  # seconds after the first failure
BACKOFF_MAX = 86400.0  # never more than a day between two tries
CA_ATTEMPTS_PER_HOUR = 3  # orders sent to the CA per domain per hour
RENEW_JITTER = 0.02  # renewals spread over this share of a certificate's lifetime
HOUR = 3600.0
DAY = 86400.0
EXPIRY_WARNING = 14 * DAY  # a certificate with less left, not renewed, is warned about (and shown red)

# Names no public CA will ever issue for (RFC 6761, RFC 8375 and common private suffixes).
_PRIVATE_SUFFIXES = ("localhost", "test", "local", "internal", "invalid", "example", "home.arpa", "lan", "localdomain")


class Ca(StrEnum):
    """Which CA the next order goes to."""

    PRODUCTION = "production"
    STAGING = "staging"  # after a failed authorization: try there until one succeeds


class Challenge(StrEnum):
    """How the CA validates a domain (the ACME challenge types lbsolo answers)."""

    HTTP01 = "http-01"  # a token over plain HTTP on port 80
    TLS_ALPN01 = "tls-alpn-01"  # a certificate in a TLS handshake on port 443 (RFC 8737)


# What makes the next try use the other challenge: failures that may be the challenge's own.
_CHALLENGE_FAILURES = frozenset({"preflight_failed", "authorization_failed", "challenge_unavailable"})


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
    ca: str = Ca.PRODUCTION  # where the next order goes (staging after a failed authorization)
    staging_passed: bool = False  # a staging order just succeeded: the next try is production's, at once
    staging_attempts: list[float] = field(default_factory=list)  # orders sent to staging (not capped)
    alerted: str = ""  # the last expiry alert sent: "<kind>:<not_after>:<day>" (once per certificate per day)
    challenge: str = ""  # the challenge the next try uses ("": the first available)
    validated_by: str = ""  # the challenge that last worked for this domain
    # The order sent to the CA and not finished yet (its key beside the record): a daemon killed
    # mid-order resumes it on start instead of sending another. "": none in flight.
    order_url: str = ""
    order_challenge: str = ""
    order_ca: str = ""

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
            "ca": str(self.ca),
            "staging_passed": self.staging_passed,
            "staging_attempts": list(self.staging_attempts),
            "alerted": self.alerted,
            "challenge": self.challenge,
            "validated_by": self.validated_by,
            "order_url": self.order_url,
            "order_challenge": self.order_challenge,
            "order_ca": self.order_ca,
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
    hourly cap on production CA attempts (the next one is allowed once the oldest leaves the hour).
    """
    if record.has_certificate and record.wanted_at <= record.last_success:
        due = renew_at(record.domain, record.not_before, record.not_after)
    else:
        due = now
    if record.failures and not record.staging_passed:
        due = max(due, record.last_attempt + backoff(record.failures))
    recent = attempts_in_window(record.ca_attempts, now)
    if per_hour > 0 and len(recent) >= per_hour and ca_for(record) == Ca.PRODUCTION:  # staging: not capped
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


def ca_for(record: CertRecord) -> Ca:
    """Where the next order for `record`'s domain goes."""
    return Ca.STAGING if record.ca == Ca.STAGING else Ca.PRODUCTION


def after_attempt(record: CertRecord, ca: Ca, ok: bool, authorization_failed: bool) -> None:
    """Where the orders go after one at `ca` ended (`ok`; or failed, by a refused authorization or
    otherwise). A failed authorization at production sends the next tries to staging; a success
    at staging sends the next one (at once, `staging_passed`) back to production; a success at
    production ends the detour. Other failures (the CA unreachable, the cap) change nothing."""
    if ca == Ca.STAGING:
        if ok:
            record.ca, record.staging_passed = Ca.PRODUCTION, True
        return
    record.staging_passed = False
    if ok:
        record.ca = Ca.PRODUCTION
    elif authorization_failed:
        record.ca = Ca.STAGING


def challenge_for(record: CertRecord, available: tuple[Challenge, ...]) -> Challenge:
    """The challenge the next try for `record`'s domain uses, of those this daemon can answer
    (`available`, in order of preference): the record's, else the first."""
    for challenge in available:
        if challenge == record.challenge:
            return challenge
    return available[0]


def after_challenge(
    record: CertRecord, used: Challenge, ok: bool, failure: str, available: tuple[Challenge, ...]
) -> None:
    """Learn from a try validated by `used`: kept after a success; after a failure whose code
    (`failure`) may be the challenge's own, the next try uses another available one. Failures
    that are not (the CA unreachable, the hourly cap) change nothing."""
    if ok:
        record.challenge = record.validated_by = str(used)
        return
    others = [c for c in available if c != used]
    if failure in _CHALLENGE_FAILURES and others:
        record.challenge = str(others[0])


def expiry_alert(record: CertRecord, now: float, warn: float = EXPIRY_WARNING) -> tuple[str, str] | None:
    """The event to raise about `record`'s certificate now, as (kind, key), or None.

    `cert.expired` past its end, `cert.expiring` with less than `warn` seconds left; the key names
    the certificate and the day, and the caller keeps it in `record.alerted`: an alert whose key
    is the one sent last is not raised again, so each goes out once per certificate per day."""
    if not record.has_certificate:
        return None
    left = record.not_after - now
    if left >= warn:
        return None
    kind = "cert.expired" if left <= 0 else "cert.expiring"
    key = f"{kind}:{int(record.not_after)}:{int(now // DAY)}"
    return None if key == record.alerted else (kind, key)


def expires_soon(record: CertRecord, now: float, warn: float = EXPIRY_WARNING) -> bool:
    """Whether `record`'s certificate is shown red: it expires within `warn` seconds (or has)."""
    return record.has_certificate and record.not_after - now < warn


def redirect_by_default(redirect: bool, chosen: bool, domain: str) -> bool:
    """Whether an app whose `domain` just got its first certificate has its HTTPS redirect turned
    on: a public name, the redirect off, and its owner never set it by hand (`chosen`)."""
    return not redirect and not chosen and is_public_name(domain)
