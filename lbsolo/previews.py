"""Preview apps per pull request: the pure decisions, over data only.

What a pull/merge request webhook of GitHub, Gitea, GitLab or Bitbucket asks for (open, update,
close) and the ref it is built from; the preview's name (`APP-pr-N`, shortened with a hash when
the 30-character app name limit requires, with further candidates when a name is taken); which
of the parent's config a preview gets; what each event does given the settings, the existing
record and the caps. core_previews.py does the I/O around these.

The ref a preview is built from is always one of the connected repository's own: its pull ref
(`refs/pull/N/head` on GitHub and Gitea, `refs/merge-requests/N/head` on GitLab) or, on
Bitbucket, which has no pull refs, the pull request's source commit fetched from the connected
repository. A fork's URL from a payload is never returned by anything here.

It must do no I/O, import nothing outside lbsolo's models and errors, and never decide whether a
signature is right (api/git.py does, before anything here reads the payload).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from lbsolo.errors import InvalidInput
from lbsolo.models import looks_secret, validate_app_name

#: Pull request numbers above this are refused as absurd (the largest projects are near 10^6).
MAX_PR_NUMBER = 10_000_000
#: At most this many previews per app, whatever its setting says.
MAX_PER_APP = 50
#: Records kept per app (refused and failed ones included); the oldest ended ones go first.
MAX_RECORDS = 100
_NAME_LIMIT = 30  # models.APP_NAME_PATTERN's
_SHA = re.compile(r"[0-9a-f]{7,64}")


class PreviewEvent(StrEnum):
    """The events core_previews emits (events.EventKind's kinds are plain strings too)."""

    CREATED = "preview.created"
    UPDATED = "preview.updated"
    DESTROYED = "preview.destroyed"
    REFUSED = "preview.refused"
    FAILED = "preview.failed"


class Provider(StrEnum):
    GITHUB = "github"
    GITEA = "gitea"
    GITLAB = "gitlab"
    BITBUCKET = "bitbucket"


class Action(StrEnum):
    OPEN = "open"
    SYNC = "sync"  # new commits on the pull request
    CLOSE = "close"  # closed or merged


class PreviewStatus(StrEnum):
    BUILDING = "building"  # a slot is taken; the first build runs
    RUNNING = "running"
    FAILED = "failed"  # the first build or rollout failed: nothing of it runs
    REFUSED = "refused"  # a cap was reached: nothing was made


ACTIVE = frozenset({PreviewStatus.BUILDING, PreviewStatus.RUNNING})


@dataclass(frozen=True)
class PullRequest:
    """What a pull request event asks for. `ref` is what is fetched from the connected repository."""

    provider: Provider
    action: Action
    number: int
    head: str  # the head commit the payload names ("" if it names none)
    ref: str
    repository: str  # the base repository's full name ("owner/name"), "" if the payload has none
    fork: bool  # the head is in another repository: still built from the connected one's pull ref
    merged: bool = False


# ---- which provider, which event -------------------------------------------------------------


def provider_of(headers: Mapping[str, str]) -> Provider | None:
    """The provider that sent a webhook, by its event header (lower-case header names).

    Gitea sends X-GitHub-Event too: its own header is looked at first.
    """
    if headers.get("x-gitea-event") or headers.get("x-gogs-event"):
        return Provider.GITEA
    if headers.get("x-github-event"):
        return Provider.GITHUB
    if headers.get("x-gitlab-event"):
        return Provider.GITLAB
    if headers.get("x-event-key"):
        return Provider.BITBUCKET
    return None


def event_of(headers: Mapping[str, str]) -> str:
    """The event's name as its provider spells it, lower-cased ("push", "pull_request", "merge request hook",
    "repo:push", "pullrequest:created", ...)."""
    for key in ("x-gitea-event", "x-gogs-event", "x-github-event", "x-gitlab-event", "x-event-key"):
        if headers.get(key):
            return headers[key].strip().lower()
    return ""


def is_pull_request_event(headers: Mapping[str, str]) -> bool:
    event = event_of(headers)
    return event in ("pull_request", "merge request hook") or event.startswith("pullrequest:")


# ---- reading a pull request payload ----------------------------------------------------------


def pull_ref(provider: Provider, number: int, head: str) -> str:
    """What is fetched from the connected repository for pull request `number`."""
    if provider in (Provider.GITHUB, Provider.GITEA):
        return f"refs/pull/{number}/head"
    if provider is Provider.GITLAB:
        return f"refs/merge-requests/{number}/head"
    if not _SHA.fullmatch(head):
        raise InvalidInput("a Bitbucket pull request event names no source commit (pullrequest.source.commit.hash)")
    return head


def validate_number(value: Any) -> int:
    """A pull request's number: a positive integer, not absurdly large."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_PR_NUMBER:
        raise InvalidInput(f"absurd pull request number {str(value)[:20]!r}: a whole number from 1 to {MAX_PR_NUMBER}")
    return value


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _sha(value: Any) -> str:
    text = str(value or "").lower()
    return text if _SHA.fullmatch(text) else ""


def parse_pull_request(provider: Provider, event: str, payload: Any) -> PullRequest | str:
    """The pull request an event is about, or why it is ignored (a str: an action that asks for
    nothing, like a label or a title edit). InvalidInput for a payload that is not one."""
    if not isinstance(payload, dict):
        raise InvalidInput("a pull request event's body is not a JSON object")
    if provider in (Provider.GITHUB, Provider.GITEA):
        return _github_like(provider, payload)
    if provider is Provider.GITLAB:
        return _gitlab(payload)
    return _bitbucket(event, payload)


def _github_like(provider: Provider, payload: dict[str, Any]) -> PullRequest | str:
    pr = _dict(payload.get("pull_request"))
    action = str(payload.get("action") or "")
    kind = {"opened": Action.OPEN, "reopened": Action.OPEN, "synchronize": Action.SYNC,
            "synchronized": Action.SYNC, "closed": Action.CLOSE}.get(action)  # fmt: skip
    if kind is None:
        return f"pull request action {action[:40]!r} asks for nothing"
    number = validate_number(payload.get("number", pr.get("number")))
    head, base = _dict(pr.get("head")), _dict(pr.get("base"))
    head_repo, base_repo = _dict(head.get("repo")), _dict(base.get("repo"))
    repository = str(base_repo.get("full_name") or _dict(payload.get("repository")).get("full_name") or "")
    fork = bool(head_repo.get("fork")) or (bool(head_repo) and head_repo.get("full_name") != repository)
    sha = _sha(head.get("sha"))
    return PullRequest(provider, kind, number, sha, pull_ref(provider, number, sha), repository, fork,
                       bool(pr.get("merged")))  # fmt: skip


def _gitlab(payload: dict[str, Any]) -> PullRequest | str:
    attrs = _dict(payload.get("object_attributes"))
    if payload.get("object_kind") != "merge_request":
        return "not a merge request event"
    action = str(attrs.get("action") or "")
    if action == "update" and not attrs.get("oldrev"):
        return "merge request update without new commits asks for nothing"
    kind = {"open": Action.OPEN, "reopen": Action.OPEN, "update": Action.SYNC, "close": Action.CLOSE,
            "merge": Action.CLOSE}.get(action)  # fmt: skip
    if kind is None:
        return f"merge request action {action[:40]!r} asks for nothing"
    number = validate_number(attrs.get("iid"))
    project = _dict(payload.get("project"))
    repository = str(project.get("path_with_namespace") or _dict(attrs.get("target")).get("path_with_namespace") or "")
    source, target = attrs.get("source_project_id"), attrs.get("target_project_id")
    sha = _sha(_dict(attrs.get("last_commit")).get("id"))
    return PullRequest(Provider.GITLAB, kind, number, sha, pull_ref(Provider.GITLAB, number, sha), repository,
                       source is not None and source != target, action == "merge")  # fmt: skip


def _bitbucket(event: str, payload: dict[str, Any]) -> PullRequest | str:
    kind = {"pullrequest:created": Action.OPEN, "pullrequest:updated": Action.SYNC,
            "pullrequest:fulfilled": Action.CLOSE, "pullrequest:rejected": Action.CLOSE}.get(event)  # fmt: skip
    if kind is None:
        return f"Bitbucket event {event[:40]!r} asks for nothing"
    pr = _dict(payload.get("pullrequest"))
    number = validate_number(pr.get("id"))
    source, destination = _dict(pr.get("source")), _dict(pr.get("destination"))
    repository = str(_dict(destination.get("repository")).get("full_name")
                     or _dict(payload.get("repository")).get("full_name") or "")  # fmt: skip
    source_repo = str(_dict(source.get("repository")).get("full_name") or repository)
    sha = _sha(_dict(source.get("commit")).get("hash"))
    ref = pull_ref(Provider.BITBUCKET, number, sha) if kind is not Action.CLOSE else sha
    return PullRequest(Provider.BITBUCKET, kind, number, sha, ref, repository, source_repo != repository,
                       event == "pullrequest:fulfilled")  # fmt: skip


def bitbucket_push(payload: Any) -> tuple[str, str] | None:
    """(branch, commit) of the last branch update of a Bitbucket `repo:push` payload; None if it
    updates no branch (a tag, a deleted branch)."""
    changes = _dict(_dict(payload).get("push")).get("changes")
    for change in reversed(changes if isinstance(changes, list) else []):
        new = _dict(_dict(change).get("new"))
        if new.get("type") == "branch" and new.get("name"):
            return str(new["name"]), _sha(_dict(new.get("target")).get("hash"))
    return None


def same_repository(connected: str, full_name: str) -> bool:
    """Whether the connected repository's URL is the repository a payload names ("owner/name"):
    its path ends with that name (case-insensitive, ".git" and slashes aside)."""
    name = full_name.strip().strip("/").lower().removesuffix(".git")
    if "/" not in name:  # an owner and a name, always: a bare name matches too much
        return False
    rest = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*", "", connected.strip())  # scheme and host
    rest = rest.split(":", 1)[1] if "://" not in connected and ":" in rest.split("/", 1)[0] else rest  # scp-like
    path = rest.strip().rstrip("/").lower().removesuffix(".git").rstrip("/")
    return path == name or path.endswith("/" + name)


# ---- names ----------------------------------------------------------------------------------


def preview_names(app: str, number: int, tries: int = 5) -> list[str]:
    """The names a preview of `app`'s pull request `number` may take, in order: `APP-pr-N` when it
    fits the name limit, then names shortened with a hash of (app, N) (salted for each further
    try). Core takes the first that is no app, add-on or static route yet."""
    validate_number(number)
    names = []
    plain = f"{app}-pr-{number}"
    if len(plain) <= _NAME_LIMIT:
        names.append(plain)
    for salt in range(tries):
        digest = hashlib.sha256(f"{app}#{number}#{salt}".encode()).hexdigest()[:6]
        tail = f"-{digest}-pr-{number}"
        head = app[: _NAME_LIMIT - len(tail)].rstrip("-")
        names.append(f"{head}{tail}")
    return [validate_app_name(n) for n in dict.fromkeys(names)]


# ---- settings, records, decisions -----------------------------------------------------------


@dataclass
class PreviewSettings:
    """An app's preview settings (`previews:settings`). Off by default: a preview runs the pull
    request's code, a fork's included, on this server."""

    enabled: bool = False
    with_secrets: bool = False  # the parent's secret config goes to its previews too
    with_addons: bool = False  # twins of the parent's add-ons, loaded from their latest backup
    max: int = 3  # previews of this app at once

    def __post_init__(self) -> None:
        if isinstance(self.max, bool) or not isinstance(self.max, int) or not 1 <= self.max <= MAX_PER_APP:
            raise InvalidInput(f"the previews' cap must be from 1 to {MAX_PER_APP}, not {self.max!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreviewSettings:
        return cls(bool(d.get("enabled", False)), bool(d.get("with_secrets", False)),
                   bool(d.get("with_addons", False)), int(d.get("max", 3)))  # fmt: skip


@dataclass
class PreviewRecord:
    """One pull request's preview of an app, as kept in the state."""

    number: int
    status: PreviewStatus
    app: str = ""  # the preview app's name, once made
    head: str = ""  # the commit it runs (or was asked to build)
    provider: str = ""
    fork: bool = False
    error: str = ""  # why it was refused or failed, or the last update's failure
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreviewRecord:
        return cls(int(d["number"]), PreviewStatus(d["status"]), str(d.get("app") or ""), str(d.get("head") or ""),
                   str(d.get("provider") or ""), bool(d.get("fork")), str(d.get("error") or ""),
                   float(d.get("created_at") or 0), float(d.get("updated_at") or 0))  # fmt: skip


class Step(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DESTROY = "destroy"
    IGNORE = "ignore"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    step: Step
    reason: str = ""


def decide(
    app: str,
    settings: PreviewSettings,
    record: PreviewRecord | None,
    pr: PullRequest,
    active_here: int,
    active_all: int,
    cap_all: int,
) -> Decision:
    """What a pull request event does to `app`'s previews, given its settings, the existing record
    of this pull request, the active previews of this app and of the whole platform, and the
    platform's cap. A refused or failed record is retried by the next push."""
    n = pr.number
    if pr.action is Action.CLOSE:
        if record is None:
            return Decision(Step.IGNORE, f"no preview of pull request #{n}: nothing to remove")
        return Decision(Step.DESTROY)
    if not settings.enabled:
        return Decision(Step.IGNORE, f"previews are off for {app} (lbsolo previews:settings {app} --enable)")
    if record is not None and record.status in ACTIVE:
        if record.status is PreviewStatus.RUNNING and pr.head and pr.head == record.head:
            return Decision(Step.IGNORE, f"the preview of #{n} already runs {pr.head[:12]}")
        return Decision(Step.UPDATE)
    if active_here >= settings.max:
        return Decision(
            Step.REFUSE,
            f"{app} has {active_here} preview(s), its cap (lbsolo previews:settings {app} --max N): "
            f"pull request #{n} gets none until one closes",
        )
    if active_all >= cap_all:
        return Decision(
            Step.REFUSE,
            f"the platform runs {active_all} preview(s), its cap (LBSOLO_MAX_PREVIEWS): "
            f"pull request #{n} gets none until one closes",
        )
    return Decision(Step.CREATE)


def trim_records(records: dict[int, PreviewRecord]) -> dict[int, PreviewRecord]:
    """At most MAX_RECORDS, dropping the oldest refused and failed ones first (active ones stay)."""
    if len(records) <= MAX_RECORDS:
        return records
    ended = sorted((r for r in records.values() if r.status not in ACTIVE), key=lambda r: r.updated_at)
    doomed = {r.number for r in ended[: len(records) - MAX_RECORDS]}
    return {n: r for n, r in records.items() if n not in doomed}


# ---- what a preview takes from its parent ----------------------------------------------------


def preview_config(
    config: Mapping[str, str], secrets: Iterable[str], attached: Iterable[str], with_secrets: bool
) -> tuple[dict[str, str], list[str], list[str]]:
    """(config, its secret keys, the keys left out) of a preview of an app with this config.

    Secret: a key marked secret (`config:set --secret`, add-on URLs) or one whose name looks
    secret (models.looks_secret: *TOKEN*, *PASSWORD*, *SECRET*, ...); those go to previews only
    when the parent allows it. The parent's add-on URLs (`attached`) never do: a preview must not
    write into the parent's databases.
    """
    marked, never = set(secrets), set(attached)
    kept, kept_secret, left = {}, [], []
    for key, value in sorted(config.items()):
        secret = key in marked or looks_secret(key)
        if key in never or (secret and not with_secrets):
            left.append(key)
            continue
        kept[key] = value
        if secret:
            kept_secret.append(key)
    return kept, kept_secret, left


def preview_formation(formation: Mapping[str, int]) -> dict[str, int]:
    """One replica of each process the parent runs (none of those it scaled to zero)."""
    return {process: min(count, 1) for process, count in formation.items()}
