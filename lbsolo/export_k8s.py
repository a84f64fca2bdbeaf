"""Kubernetes manifests for an app's current release (`lbsolo export k8s APP`). Pure.

For a team that outgrows one server and moves to Kubernetes, the app as lbsolo runs it, written as
the objects a cluster runs it with:

- a Deployment per process type, with the formation's replicas, the release's command, lbsolo's
  environment (PORT for web, LBSOLO_APP, LBSOLO_RELEASE, LBSOLO_PROCESS), the app's resource
  limits, a readiness probe from its health check (web) and a liveness probe on its port, and a
  zero-downtime rolling update (a new pod ready before an old one goes, as lbsolo's rollout);
- a ConfigMap with the config vars that are not secret, and a Secret with those that are (secret
  values are in the Secret only);
- a PersistentVolumeClaim per volume, mounted where lbsolo mounts it;
- a Service and an Ingress for web: the app's own host and its custom domains.

Checked in tests against the official schemas of KUBERNETES_VERSION. It must not read the state
or the engine: the core hands it the app, its release and which keys are secret.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from lbsolo.config import Settings
from lbsolo.engine import parse_memory
from lbsolo.errors import InvalidInput
from lbsolo.models import WEB, App, HealthCheck, Release

KUBERNETES_VERSION = "1.30.0"  # the API versions used below are all GA there
MANAGED_BY = "lbsolo-export"


@dataclass(frozen=True)
class Target:
    """Where the manifests will run: the image reference and the sizes a cluster needs to be told."""

    image: str  # e.g. registry.example.com/team/shop:v3 (the release's image, pushed there)
    domain: str  # lbsolo's domain: the app's own host is <app>.<domain>
    port: int  # the PORT web processes listen on
    volume_size: str = "1Gi"


_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.:-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$")
_SIZE = re.compile(r"^[1-9][0-9]{0,5}(Mi|Gi|Ti)$")


def export_target(app: str, label: str, registry: str | None, volume_size: str, settings: Settings) -> Target:
    """Where the export runs, checked: the release's image under `registry` (else the local tag
    lbsolo gives it, for a cluster on this machine), and the volumes' size."""
    if registry is not None and (len(registry) > 200 or not _REGISTRY.match(registry.rstrip("/"))):
        raise InvalidInput(f"invalid registry {registry!r}: expected e.g. registry.example.com/team")
    if not _SIZE.match(volume_size):
        raise InvalidInput(f"invalid volume size {volume_size!r}: expected e.g. 1Gi, 500Mi or 2Ti")
    repository = f"{registry.rstrip('/')}/{app}" if registry else f"lbsolo/{app}"
    return Target(f"{repository}:{label}", settings.domain, settings.container_port, volume_size)


def labels(app: str, process: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": MANAGED_BY}
    if process is not None:
        out["app.kubernetes.io/component"] = process
    return out


def _meta(name: str, app: str, process: str | None = None, release: str | None = None) -> dict[str, Any]:
    meta_labels = labels(app, process)
    if release is not None:
        meta_labels["app.kubernetes.io/version"] = release
    return {"name": name, "labels": meta_labels}


def quantity_memory(value: str) -> str:
    """lbsolo's memory ('512m', '1g') as a Kubernetes quantity ('512Mi', '1Gi')."""
    size = parse_memory(value)
    for unit, factor in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def quantity_cpu(cpus: float) -> str:
    """lbsolo's CPUs (0.5) as a Kubernetes quantity ('500m')."""
    return f"{max(1, round(cpus * 1000))}m"


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def probes(check: HealthCheck) -> dict[str, Any]:
    """Readiness from lbsolo's health check (an HTTP GET, or the port accepting connections), and a
    liveness probe on the port that only restarts a process that stopped answering at all."""
    action: dict[str, Any] = (
        {"httpGet": {"path": check.path, "port": "http"}} if check.path else {"tcpSocket": {"port": "http"}}
    )
    readiness = {
        **action,
        "initialDelaySeconds": math.ceil(check.grace),
        "periodSeconds": _seconds(check.interval),
        "timeoutSeconds": _seconds(check.timeout),
        "successThreshold": check.retries,
        "failureThreshold": 3,
    }
    liveness = {
        "tcpSocket": {"port": "http"},
        "initialDelaySeconds": math.ceil(check.grace) + 10,
        "periodSeconds": 10,
        "timeoutSeconds": _seconds(check.timeout),
        "failureThreshold": 3,
    }
    return {"readinessProbe": readiness, "livenessProbe": liveness}


def _resources(limits: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, str] = {}
    if limits.get("memory"):
        out["memory"] = quantity_memory(str(limits["memory"]))
    if limits.get("cpus"):
        out["cpu"] = quantity_cpu(float(limits["cpus"]))
    # Requests equal to limits: the scheduler reserves what lbsolo's limits allow.
    return {"limits": out, "requests": dict(out)} if out else {}


def deployment(
    app: App, release: Release, process: str, target: Target, env_from: list[dict[str, Any]]
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": process,
        "image": target.image,
        "env": [
            {"name": "LBSOLO_APP", "value": app.name},
            {"name": "LBSOLO_RELEASE", "value": release.label},
            {"name": "LBSOLO_PROCESS", "value": process},
        ],
    }
    command = release.command(process)
    if command:
        container["command"] = ["/bin/sh", "-c", command]
    if env_from:
        container["envFrom"] = env_from
    if process == WEB:
        container["env"].append({"name": "PORT", "value": str(target.port)})
        container["ports"] = [{"name": "http", "containerPort": target.port}]
        container.update(probes(HealthCheck.from_dict(release.health)))
    resources = _resources(app.resources.get(process, {}))
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {"containers": [container]}
    if app.volumes:
        container["volumeMounts"] = [{"name": vol, "mountPath": path} for vol, path in sorted(app.volumes.items())]
        pod["volumes"] = [
            {"name": vol, "persistentVolumeClaim": {"claimName": f"{app.name}-{vol}"}} for vol in sorted(app.volumes)
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(f"{app.name}-{process}", app.name, process, release.label),
        "spec": {
            "replicas": app.formation.get(process, 0),
            "selector": {"matchLabels": labels(app.name, process)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels(app.name, process)}, "spec": pod},
        },
    }


def manifests(app: App, release: Release, secret_keys: set[str], target: Target) -> list[dict[str, Any]]:
    """Every object of the app, in the order `kubectl apply` wants them (what pods use first)."""
    name = app.name
    plain = {k: v for k, v in sorted(release.config.items()) if k not in secret_keys}
    secret = {k: v for k, v in sorted(release.config.items()) if k in secret_keys}
    out: list[dict[str, Any]] = []
    env_from: list[dict[str, Any]] = []
    if plain:
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{name}-config", name), "data": plain})
        env_from.append({"configMapRef": {"name": f"{name}-config"}})
    if secret:
        meta = _meta(f"{name}-secrets", name)
        out.append({"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "stringData": secret})
        env_from.append({"secretRef": {"name": f"{name}-secrets"}})
    for vol in sorted(app.volumes):
        out.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": _meta(f"{name}-{vol}", name),
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": target.volume_size}}},
            }
        )
    processes = release.process_types()
    out.extend(deployment(app, release, p, target, env_from) for p in processes)
    if WEB in processes:
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(name, name, WEB),
                "spec": {
                    "selector": labels(name, WEB),
                    "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
                },
            }
        )
        backend = {"service": {"name": name, "port": {"name": "http"}}}
        hosts = [f"{name}.{target.domain}", *(d for d in app.domains if d != f"{name}.{target.domain}")]
        rules = [
            {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
            for host in hosts
        ]
        out.append(
            {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": _meta(name, name, WEB),
             "spec": {"rules": rules}}
        )  # fmt: skip
    return out
