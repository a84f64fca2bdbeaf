"""The scheduler's pure decisions: desired state + what the engine reports -> what to do.

No I/O and no clock: core runs these and does the work. Unit-tested without Docker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from lbsolo.errors import InvalidInput, NotFound
from lbsolo.models import WEB, DeployStep, Release, ReleaseStatus, Replica, StaticRoute, parse_address
from lbsolo.proxy_routes import Route, Target


@dataclass(frozen=True)
class Desired:
    version: int | None
    formation: Mapping[str, int] = field(default_factory=lambda: {WEB: 1})
    domains: tuple[str, ...] = ()
    https_redirect: bool = False
    request_buffering: bool = True
    hsts: bytes = b""  # the Strict-Transport-Security line (hsts_line), b"": none
    asleep: bool = False  # `apps:sleep`: no replica runs (the formation is empty), requests wake it


HSTS_MAX_AGE_LIMIT = 2 * 365 * 86400  # two years, the longest max-age lbsolo sends
HSTS_DEFAULT_MAX_AGE = 365 * 86400  # one year (Caddy's and the preload list's minimum)


def validate_hsts_max_age(value: object) -> int:
    """An HSTS max-age: a positive whole number of seconds, at most two years."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= HSTS_MAX_AGE_LIMIT:
        raise InvalidInput(f"HSTS max-age must be a whole number of seconds from 1 to {HSTS_MAX_AGE_LIMIT} (two years)")
    return value


def hsts_line(max_age: int, subdomains: bool) -> bytes:
    """The Strict-Transport-Security header line for an app (RFC 6797), b"" when HSTS is off (max_age 0)."""
    if max_age <= 0:
        return b""
    return b"Strict-Transport-Security: max-age=%d%s\r\n" % (max_age, b"; includeSubDomains" if subdomains else b"")


class ActionKind(StrEnum):
    RUN = "run"  # start a new replica of the desired release
    RESTART = "restart"  # start an existing stopped replica of the desired release
    REMOVE = "remove"  # stop and remove a replica nobody wants


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    app: str
    release: int | None = None
    replica: Replica | None = None
    process: str = WEB


def _as_desired(d: Desired | int | None) -> Desired:
    return d if isinstance(d, Desired) else Desired(d)


def plan(desired: Mapping[str, Desired | int | None], actual: list[Replica]) -> list[Action]:
    """Actions that make each app run its formation of its desired release, and nothing else."""
    actions: list[Action] = []
    by_app: dict[str, list[Replica]] = {}
    for r in actual:
        if not r.one_off:  # its starter waits for it and removes it; a pass must not
            by_app.setdefault(r.app, []).append(r)
    for app, mine in sorted(by_app.items()):
        if app not in desired:
            actions += [Action(ActionKind.REMOVE, app, r.release, r, r.process) for r in mine]
    for app, want in sorted(desired.items()):
        want = _as_desired(want)
        mine = by_app.get(app, [])
        version = want.version
        wanted = {p: n for p, n in want.formation.items() if n > 0} if version is not None else {}
        for r in mine:
            if r.release != version or r.process not in wanted:
                actions.append(Action(ActionKind.REMOVE, app, r.release, r, r.process))
        for process, count in sorted(wanted.items()):
            current = [r for r in mine if r.release == version and r.process == process]
            running = sorted((r for r in current if r.running), key=lambda r: (r.started_at, r.id))
            stopped = [r for r in current if not r.running]
            # Keep the oldest running replicas; surplus ones (e.g. started twice) go.
            actions += [Action(ActionKind.REMOVE, app, version, r, process) for r in running[count:]]
            missing = count - len(running)
            for r in stopped:
                if missing > 0:
                    actions.append(Action(ActionKind.RESTART, app, version, r, process))
                    missing -= 1
                else:
                    actions.append(Action(ActionKind.REMOVE, app, version, r, process))
            actions += [Action(ActionKind.RUN, app, version, None, process) for _ in range(missing)]
    return actions


# A replica that stayed up this long after a restart was healthy: when it dies, it is restarted at
# once and its app's count starts again (Docker's restart policy uses the same 10 s).
HEALTHY_AFTER = 10.0
BACKOFF_FIRST = 0.5  # after a restart that did not last, then doubling ...
BACKOFF_MAX = 60.0  # ... up to this


class RestartHistory(NamedTuple):
    """An app's restarts of crashed replicas, on the scheduler's monotonic clock.

    A tuple, so that readers of the count take `[0]`.
    """

    in_a_row: int = 0  # restarts after which the replica did not stay up HEALTHY_AFTER
    last: float = 0.0  # when the last restart was
    down_since: float = 0.0  # when a pass first found a replica down after it (0: not yet)

    def went_down(self, now: float) -> RestartHistory:
        """A pass found a replica down at `now`; the first such moment after the last restart counts."""
        return self if self.down_since else self._replace(down_since=now)

    def came_back(self) -> RestartHistory:
        """A pass found every replica up without restarting any."""
        return self._replace(down_since=0.0)

    def lasted(self) -> bool:
        """Whether the replica stayed up HEALTHY_AFTER after the last restart (or was never restarted)."""
        return self.in_a_row == 0 or self.down_since - self.last >= HEALTHY_AFTER

    def settled(self, now: float) -> bool:
        """Up and healthy since the last restart: nothing left to remember."""
        return not self.down_since and (self.in_a_row == 0 or now - self.last >= HEALTHY_AFTER)

    def restart_delay(self, now: float) -> float:
        """Seconds until the app's crashed replicas may be restarted (after `went_down`): 0 means at once.

        At once when the replica was healthy (it stayed up HEALTHY_AFTER after the last restart);
        otherwise the app is crash-looping: BACKOFF_FIRST after the last restart, doubling with each
        restart in a row, up to BACKOFF_MAX.
        """
        if self.lasted():
            return 0.0
        wait = min(BACKOFF_FIRST * 2.0 ** (self.in_a_row - 1), BACKOFF_MAX)
        return max(0.0, self.last + wait - now)

    def restarted(self, now: float) -> RestartHistory:
        """The history after a restart at `now`: a new count when the replica had been healthy."""
        return RestartHistory(1 if self.lasted() else self.in_a_row + 1, now)


def routes_for(desired: Mapping[str, Desired | int | None], actual: list[Replica]) -> dict[str, Route]:
    """The proxy's routes: every app, targeting its running web replicas of the desired release."""
    routes = {}
    for app, want in desired.items():
        want = _as_desired(want)
        version = want.version
        targets = tuple(
            Target(*r.address)
            for r in sorted(actual, key=lambda r: r.id)
            if r.app == app and r.release == version and r.process == WEB and r.running and r.address
        )
        routes[app] = Route(
            app=app,
            release=f"v{version}" if version else None,
            targets=targets,
            domains=want.domains,
            https_redirect=want.https_redirect,
            hsts=want.hsts,
            request_buffering=want.request_buffering,
            asleep=want.asleep,
        )
    return routes


def static_routes_for(statics: list[StaticRoute]) -> dict[str, Route]:
    """The proxy's routes for static routes: one fixed target each, on this machine."""
    routes = {}
    for s in statics:
        host, port = parse_address(s.to)
        # The proxy connects to addresses, never names: localhost becomes 127.0.0.1 here.
        routes[s.name] = Route(
            app=s.name, targets=(Target("127.0.0.1" if host == "localhost" else host, port),), domains=tuple(s.domains)
        )
    return routes


def rollback_target(releases: list[Release], current: int | None, version: int | None) -> Release:
    """The release a rollback re-uses: the given version, or the last good one before the current."""
    if version is not None:
        for r in releases:
            if r.version == version:
                if r.status == ReleaseStatus.FAILED:
                    raise InvalidInput(f"v{version} never served (it failed); pick another release")
                if r.version == current:
                    raise InvalidInput(f"v{version} is already the current release")
                return r
        raise NotFound(f"no release v{version}")
    good = [r for r in releases if r.status != ReleaseStatus.FAILED and r.version != current]
    before = [r for r in good if current is None or r.version < current]
    if not before:
        raise InvalidInput("there is no earlier release to roll back to")
    return max(before, key=lambda r: r.version)


#: Steps at or after the swap: the release's replicas had passed their checks and took the traffic.
PAST_SWAP = frozenset({DeployStep.SWAP, DeployStep.DRAIN, DeployStep.STOP_OLD, DeployStep.DONE})


def interrupted(releases: list[Release], current: int | None) -> tuple[Release | None, list[Release]]:
    """After a daemon restart, an app's rollouts that never finished: (the one to finish, the ones that failed).

    One that had swapped traffic to its replicas is finished (made current): going back would
    send traffic to replicas it may already have stopped. One that had not is failed, and the
    current release keeps serving as if it had never started.
    """
    unfinished = [r for r in releases if r.status in (ReleaseStatus.PENDING, ReleaseStatus.DEPLOYING)]
    swapped = [
        r
        for r in unfinished
        if r.step in PAST_SWAP and r.status == ReleaseStatus.DEPLOYING and (current is None or r.version >= current)
    ]
    finish = max(swapped, key=lambda r: r.version, default=None)
    return finish, [r for r in unfinished if r is not finish and r.version != current]


def images_to_remove(releases: list[Release], current: int | None, images: list[str], keep: int) -> list[str]:
    """Image ids beyond the last `keep` releases' (the current one always kept), so rollback stays instant."""
    recent = sorted(releases, key=lambda r: r.version, reverse=True)[:keep]
    wanted = {r.image for r in recent} | {r.image for r in releases if r.version == current}
    return [i for i in images if i not in wanted]
