"""The add-on record: a database (or cache) lbsolo runs for apps, and its named states.

A plain dataclass with to/from dict for the state store, like the records in models.py; the
kinds' knowledge is addon_kinds.py's, the use cases core_addons.py's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from lbsolo.models import MASK, now


class AddonStatus(StrEnum):
    CREATING = "creating"  # container, volume and network being made; not attached yet
    RUNNING = "running"
    FAILED = "failed"  # creation failed: `error` says why; destroy removes what is left
    RETIRED = "retired"  # replaced by a major upgrade (`upgrade` names its successor): stopped, kept until destroyed


@dataclass
class Addon:
    """A database (or cache) lbsolo runs for apps: one container on a named volume.

    `attachments` maps each attached app to the config var that carries the add-on's URL (a
    secret of the app). Add-on names share the namespace of apps and static routes.
    """

    name: str
    kind: str  # a key of addon_kinds.KINDS
    version: str
    credentials: dict[str, str] = field(default_factory=dict)  # user, password, database
    attachments: dict[str, str] = field(default_factory=dict)  # app -> config var
    status: AddonStatus = AddonStatus.CREATING
    error: str | None = None
    created_at: float = field(default_factory=now)
    # Scheduled backups: a cron expression (None: none scheduled) and how many scheduled ones to keep.
    backup_schedule: str | None = None
    backup_keep: int = 7
    # Published on the host by addons:expose: {"address": "127.0.0.1", "port": 15432}; empty: not published.
    exposed: dict[str, Any] = field(default_factory=dict)
    # Where backups are also kept (addon_backup_remote.Target's fields, with `encrypt` and the key's
    # `key_id`): an S3-compatible bucket; empty: local only. Its credentials are never shown.
    backup_target: dict[str, Any] = field(default_factory=dict)
    # An upgrade under way or done (core_addon_upgrade.py): {"to", "version", "step"|"way"|"done"}; empty: none.
    upgrade: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Addon:
        return cls(
            name=d["name"],
            kind=d["kind"],
            version=str(d["version"]),
            credentials=dict(d.get("credentials") or {}),
            attachments=dict(d.get("attachments") or {}),
            status=AddonStatus(d.get("status", AddonStatus.CREATING)),
            error=d.get("error"),
            created_at=d.get("created_at", 0.0),
            backup_schedule=d.get("backup_schedule"),
            backup_keep=int(d.get("backup_keep", 7)),
            exposed=dict(d.get("exposed") or {}),
            backup_target=dict(d.get("backup_target") or {}),
            upgrade=dict(d.get("upgrade") or {}),
        )

    def public(self) -> dict[str, Any]:
        """As the API shows it: no password, no bucket credentials."""
        d = self.to_dict()
        d["credentials"] = {k: (MASK if k == "password" else v) for k, v in self.credentials.items()}
        d["backup_target"] = masked_target(self.backup_target)
        return d


def masked_target(target: dict[str, Any]) -> dict[str, Any]:
    """A backup target as outputs show it: its credentials masked."""
    secret = ("access_key_id", "secret_access_key")
    return {k: (MASK if k in secret and v else v) for k, v in target.items()}
