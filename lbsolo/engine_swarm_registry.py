"""Release images into the registry, for every swarm node to pull by digest (issue 17).

`push_release` tags a release's image `<registry>/<app>:<label>` on the manager's engine, pushes
it, drops that tag again (the engine keeps the image under its own name; the registry keeps the
pushed copy) and returns `<registry>/<app>@sha256:…`, the reference services are created from:
a node that never had the image pulls exactly that content. A push that fails names the
registry and the fix (lbsolo.cluster_plan.push_problem).

Over the engine's image API on a DockerBackend's connection; errors become lbsolo's EngineError
tree. Loaded only with the swarm backend. It must not start or stop the registry
(lbsolo.daemon_registry does), nor log credentials of a user's registry.
"""

from __future__ import annotations

import contextlib
from typing import Any

import docker.errors

from lbsolo.cluster_plan import digest_reference, push_problem, release_repository
from lbsolo.engine_docker import DockerBackend
from lbsolo.engine_docker import _engine_errors as engine_errors
from lbsolo.errors import EngineError


def push_outcome(lines: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(digest, error) from the engine's push progress messages: the last error wins, else the digest."""
    digest = error = None
    for line in lines:
        if line.get("error") or line.get("errorDetail"):
            error = str(line.get("error") or (line.get("errorDetail") or {}).get("message") or line)
        aux = line.get("aux") or {}
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = str(aux["Digest"])
    return (None, error) if error else (digest, None if digest else "the engine reported no digest")


def push_release(backend: DockerBackend, registry: str, image_id: str, app: str, label: str) -> str:
    """Push a release's image to `registry`; returns the digest reference (`<registry>/<app>@sha256:…`)."""
    repository = release_repository(registry, app)
    api = backend.client.api
    with engine_errors(f"tag {repository}:{label}"):
        api.tag(image_id, repository, label)
    try:
        with engine_errors(f"push {repository}:{label}"):  # the engine itself unreachable: EngineUnavailable
            try:
                lines = list(api.push(repository, tag=label, stream=True, decode=True))
            except docker.errors.APIError as e:
                raise EngineError(push_problem(registry, str(e.explanation or e))) from e
        digest, error = push_outcome(lines)
        if error or digest is None:
            raise EngineError(push_problem(registry, error or "no digest"))
        return digest_reference(registry, app, digest)
    finally:
        # The tag only served the push: the release's image keeps its own name, nothing else is left.
        with contextlib.suppress(EngineError), engine_errors(f"untag {repository}:{label}"):
            api.remove_image(f"{repository}:{label}", noprune=True)
