"""The engine's part of a whole-platform backup: images saved and loaded, volumes read and filled.

Images go through one `docker save` call (layers shared between images are stored once) and
`docker load`. A volume is read and filled through a throw-away container that is created and
never started — the engine's archive API reads and writes a stopped container's mounts — so no
tar or shell is needed in its image; it carries lbsolo's labels and is removed at once.
Everything streams between the engine and a file. Blocking: callers in the event loop use
asyncio.to_thread. Decides nothing (core_platform_backup.py and platform_restore.py do).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker.errors

from lbsolo.engine_docker import DockerBackend, _engine_errors
from lbsolo.models import LABEL_APP, LABEL_INSTANCE, LABEL_MANAGED

MOUNT = "/lbsolo-volume"  # where the throw-away container sees the volume; the tar's top directory
LABEL_SCRATCH = "lbsolo.platform-backup"
CHUNK = 1024 * 1024


class DockerArchive:
    def __init__(self, backend: DockerBackend) -> None:
        self.backend = backend

    @property
    def _client(self) -> docker.DockerClient:
        return self.backend.client

    def ping(self) -> str:
        return self.backend.ping()

    def volume_name(self, app: str, name: str) -> str:
        return f"lbsolo-{self.backend.instance}-{app}-{name}"

    def image_tags(self, image_id: str) -> list[str]:
        """The image's names (lbsolo/<app>:build-…); empty when it has none or is absent."""
        try:
            return [str(t) for t in self._client.images.get(image_id).tags]
        except docker.errors.ImageNotFound:
            return []

    def save_images(self, names: list[str], out: Path) -> int:
        """One `docker save` of every name (tags, or ids), streamed into out; bytes written."""
        api = self._client.api
        written = 0
        with _engine_errors("save images"), open(out, "wb") as f:
            response = api._get(api._url("/images/get"), params={"names": names}, stream=True, timeout=None)
            api._raise_for_status(response)
            for piece in response.iter_content(CHUNK):
                f.write(piece)
                written += len(piece)
        return written

    def load_images(self, archive: Path) -> None:
        with _engine_errors("load images"), open(archive, "rb") as f:
            # quiet: the answer is one small JSON stream, read whole so an error in it is raised.
            for line in self._client.api.load_image(f, quiet=True):
                if isinstance(line, dict) and line.get("error"):
                    raise docker.errors.APIError(str(line["error"]))

    @contextlib.contextmanager
    def _holder(self, volume: str, image: str) -> Iterator[str]:
        labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: self.backend.instance, LABEL_SCRATCH: "true"}
        name = f"lbsolo-{self.backend.instance}-backup-{uuid.uuid4().hex[:8]}"
        with _engine_errors(f"volume {volume}"):
            container = self._client.api.create_container(
                image,
                command=["true"],
                name=name,
                labels=labels,
                network_disabled=True,
                host_config=self._client.api.create_host_config(binds={volume: {"bind": MOUNT, "mode": "rw"}}),
            )
        try:
            yield str(container["Id"])
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                self._client.api.remove_container(container["Id"], force=True, v=False)

    def export_volume(self, volume: str, image: str, out: Path) -> int:
        """The volume's files as a tar (top directory lbsolo-volume/) into out; bytes written."""
        written = 0
        with self._holder(volume, image) as cid, _engine_errors(f"read volume {volume}"), open(out, "wb") as f:
            stream, _stat = self._client.api.get_archive(cid, MOUNT, chunk_size=CHUNK)
            for piece in stream:
                f.write(piece)
                written += len(piece)
        return written

    def import_volume(self, volume: str, app: str, image: str, archive: Path) -> None:
        """Create the volume (lbsolo's labels) and fill it from an export_volume tar."""
        labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: self.backend.instance, LABEL_APP: app}
        with _engine_errors(f"create volume {volume}"):
            self._client.api.create_volume(volume, labels=labels)
        with self._holder(volume, image) as cid, _engine_errors(f"fill volume {volume}"), open(archive, "rb") as f:
            if not self._client.api.put_archive(cid, "/", f):
                raise docker.errors.APIError(f"the engine refused the files of volume {volume}")

    def volume_exists(self, volume: str) -> bool:
        try:
            self._client.api.inspect_volume(volume)
        except docker.errors.NotFound:
            return False
        return True

    def remove_volume(self, volume: str) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            self._client.api.remove_volume(volume, force=True)

    def image_present(self, image: str) -> bool:
        return self.backend.image_exists(image)

    def remove_image(self, image: str) -> None:
        self.backend.remove_image(image)

    def instance_leftovers(self) -> int:
        """Containers and volumes of this instance already on the engine."""
        filters = {"label": [f"{LABEL_INSTANCE}={self.backend.instance}"]}
        with _engine_errors("list the instance's containers and volumes"):
            containers = self._client.api.containers(all=True, filters=filters)
            volumes = (self._client.api.volumes(filters=filters) or {}).get("Volumes") or []
        return len(containers) + len(volumes)
