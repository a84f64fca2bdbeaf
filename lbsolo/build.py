"""The builder: checks an uploaded source archive and turns it into an image.

Builds run one at a time (a queue worker) so a burst of deploys cannot eat the server;
each build has a memory cap and a timeout. Output is streamed line by line into a LogBuffer
that any number of followers can read live. This module decides nothing about releases or
routing; core does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import io
import logging
import posixpath
import re
import tarfile
import tempfile
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from lbsolo.build_detect import Detection, detect, parse_procfile
from lbsolo.cron_plan import toml_entries
from lbsolo.engine import Engine
from lbsolo.errors import BuildFailed, InvalidInput, LbsoloError
from lbsolo.models import Build, BuildStatus, HealthCheck, now, validate_process_name

log = logging.getLogger("lbsolo.build")


class LogBuffer:
    """An append-only list of lines that followers can tail until it is closed.

    Bounded: lines are cut at `max_line` characters, and past `max_lines` lines only the last
    `tail` are kept (added at close, after one line saying how many were left out), so a build
    that prints without end costs a fixed amount of memory and of disk.
    """

    def __init__(
        self, max_lines: int = 5000, max_line: int = 4096, tail: int = 200, on_line: Callable[[str], None] | None = None
    ) -> None:
        self.lines: list[str] = []
        self.on_line = on_line  # every line appended, also those past max_lines (the log drains)
        self.closed = False
        self.max_lines = max_lines
        self.max_line = max_line
        self.omitted = 0
        self._tail: collections.deque[str] = collections.deque(maxlen=tail)
        self._changed = asyncio.Event()

    def append(self, line: str) -> None:
        if self.closed:
            return
        if len(line) > self.max_line:
            line = line[: self.max_line] + f" [... {len(line) - self.max_line} characters cut]"
        if self.on_line is not None:
            self.on_line(line)
        if len(self.lines) < self.max_lines:
            self.lines.append(line)
            self._wake()
            return
        if len(self._tail) == self._tail.maxlen:
            self.omitted += 1
        self._tail.append(line)

    def close(self) -> None:
        if self.closed:
            return
        if self.omitted:
            self.lines.append(f"[... {self.omitted} lines left out; the last {len(self._tail)} follow]")
        self.lines.extend(self._tail)
        self._tail.clear()
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[str]:
        i = 0
        while True:
            while i < len(self.lines):
                yield self.lines[i]
                i += 1
            if self.closed:
                return
            await self._changed.wait()


@dataclass(frozen=True)
class SourceSpec:
    """What the source declares about how to run it: Procfile commands and lbsolo.toml settings."""

    processes: dict[str, str] = field(default_factory=dict)
    health: dict[str, object] = field(default_factory=dict)
    base_images: dict[str, str] = field(default_factory=dict)  # [build] base_images in lbsolo.toml
    build_args: dict[str, str] = field(default_factory=dict)  # [build] args in lbsolo.toml
    cron: list[dict[str, str]] = field(default_factory=list)  # [[cron]] entries in lbsolo.toml, checked


SPEC_FILES = ("Dockerfile", "Procfile", "lbsolo.toml")
MAX_SPEC_FILE = 64 * 1024


def check_context(path: Path) -> tuple[SourceSpec, bool]:
    """Reject archives that are not tars or escape their root; read the spec; say if a Dockerfile is there."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                name = member.name
                parts = posixpath.normpath(name).split("/")
                if name.startswith("/") or ".." in parts:
                    raise InvalidInput(f"unsafe path in the uploaded archive: {name!r}")
                if member.issym() or member.islnk():
                    target = member.linkname
                    base = posixpath.dirname(name) if member.issym() else ""
                    resolved = posixpath.normpath(posixpath.join(base, target))
                    if target.startswith("/") or resolved.split("/")[0] == "..":
                        raise InvalidInput(f"link {name!r} points outside the source tree")
                elif not (member.isfile() or member.isdir()):
                    raise InvalidInput(f"unsupported file type in the uploaded archive: {name!r}")
                norm = posixpath.normpath(name)
                if norm in SPEC_FILES and member.isfile():
                    if member.size > MAX_SPEC_FILE:
                        raise InvalidInput(f"{norm} is larger than {MAX_SPEC_FILE} bytes")
                    f = tar.extractfile(member)
                    found[norm] = f.read() if f else b""
    except tarfile.TarError as e:
        raise InvalidInput(f"the upload is not a readable tar archive: {e}") from e
    return parse_spec(found.get("Procfile"), found.get("lbsolo.toml")), "Dockerfile" in found


def add_generated_dockerfile(path: Path, base_images: Mapping[str, str] | None = None) -> Detection:
    """For a source without a Dockerfile: detect its kind and append the generated Dockerfile to the tar.

    Only called after check_context accepted the archive, so extracting it is safe.
    """
    with tempfile.TemporaryDirectory(prefix="lbsolo-detect-") as tmp:
        with tarfile.open(path, mode="r:") as tar:
            tar.extractall(tmp, filter="data")
        detection = detect(Path(tmp), base_images)
    data = detection.dockerfile.encode()
    info = tarfile.TarInfo("Dockerfile")
    info.size, info.mode = len(data), 0o644
    with tarfile.open(path, mode="a:") as tar:
        tar.addfile(info, io.BytesIO(data))
    return detection


def parse_spec(procfile: bytes | None, app_toml: bytes | None) -> SourceSpec:
    processes: dict[str, str] = {}
    health: dict[str, object] = {}
    cron: list[dict[str, str]] = []
    if app_toml is not None:
        try:
            doc = tomllib.loads(app_toml.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise InvalidInput(f"lbsolo.toml is not valid TOML: {e}") from e
        health = dict(doc.get("healthcheck") or {})
        HealthCheck.from_dict(health)  # validate now, not at rollout
        for kind, command in (doc.get("processes") or {}).items():
            processes[validate_process_name(str(kind))] = str(command)
        build = doc.get("build") or {}
        if not isinstance(build, dict):
            raise InvalidInput("[build] in lbsolo.toml must be a table")
        base_images = {str(k): str(v) for k, v in (build.get("base_images") or {}).items()}
        build_args = {str(k): str(v) for k, v in (build.get("args") or {}).items()}
        cron = toml_entries(doc.get("cron"))
    else:
        base_images, build_args = {}, {}
    if procfile is not None:
        processes.update(parse_procfile(procfile.decode("utf-8", "replace")))
    return SourceSpec(processes=processes, health=health, base_images=base_images, build_args=build_args, cron=cron)


def label_dockerfile(text: str, labels: Mapping[str, str]) -> str:
    """The Dockerfile with one LABEL instruction carrying lbsolo's labels, right after its last FROM.

    There, with the same labels every time, the step is a build-cache hit from the second build
    on; at the end it would follow the changed files and run (and cost a step) on every build.
    The labels reach only the final stage's image, which is the one lbsolo runs. Nothing per
    build goes here: the source hash and the build id are kept in the build's record instead.
    """
    lines = text.splitlines()
    escape = "\\"
    for line in lines:  # parser directives come first: `# escape=`` ` changes the continuation character
        directive = re.match(r"#\s*(\w+)\s*=\s*(\S+)\s*$", line.strip())
        if not directive:
            break
        if directive.group(1).lower() == "escape":
            escape = directive.group(2)
    after = len(lines)  # no FROM at all: the engine rejects the Dockerfile, the LABEL changes nothing
    in_from = continued = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not continued:
            if not stripped or stripped.startswith("#"):
                continue
            in_from = stripped.split(None, 1)[0].upper() == "FROM"
        elif stripped.startswith("#"):  # comments inside a continued instruction are dropped by the engine
            continue
        continued = stripped.endswith(escape)
        if in_from and not continued:
            after = i + 1
    pairs = " ".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return "\n".join([*lines[:after], f"LABEL {pairs}", *lines[after:]]) + "\n"


def label_context(path: Path, labels: Mapping[str, str]) -> None:
    """Put lbsolo's labels into the archive's Dockerfile (see label_dockerfile).

    The engine's own `labels` build option adds one uncached build step per label instead. The
    updated Dockerfile is appended to the tar: the last entry of a name wins.
    """
    with tarfile.open(path, mode="r:") as tar:
        member = tar.getmember("Dockerfile")
        f = tar.extractfile(member)
        text = f.read().decode("utf-8", "replace") if f else ""
    data = label_dockerfile(text, labels).encode()
    info = tarfile.TarInfo("Dockerfile")
    info.size, info.mode = len(data), 0o644
    with tarfile.open(path, mode="a:") as tar:
        tar.addfile(info, io.BytesIO(data))


def reusable_images(builds: Iterable[Build], source: str) -> list[str]:
    """Images of earlier successful builds of this very source, newest first (they may be gone since)."""
    same = (b for b in builds if b.source == source and b.status is BuildStatus.SUCCEEDED)
    return [b.image for b in sorted(same, key=lambda b: b.created_at, reverse=True) if b.image]


def builds_to_forget(builds: Iterable[Build], keep: int, busy: Iterable[str] = ()) -> list[Build]:
    """An app's builds beyond its newest `keep` (at least one), oldest first; never a `busy` one."""
    busy = set(busy)
    newest_first = sorted(builds, key=lambda b: b.created_at, reverse=True)
    return [b for b in reversed(newest_first[max(keep, 1) :]) if b.id not in busy]


def file_digest(path: Path) -> str:
    """The source's identity: the sha256 of the uploaded archive (the CLI packs deterministically)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class BuildJob:
    build: Build
    context: Path
    tag: str
    output: LogBuffer
    build_args: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False
    done: asyncio.Future[tuple[str, SourceSpec]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Builder:
    """A queue of builds run by one worker task against the engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        memory: str,
        timeout: float,
        base_images: Mapping[str, str] | None = None,
        on_change: Callable[[Build], None] | None = None,
        builds: Callable[[str], list[Build]] | None = None,
        forget_builds: Callable[[str, list[str]], None] | None = None,
        log_dir: Path | None = None,
        keep_builds: int = 0,
    ) -> None:
        self.engine = engine
        self.memory = memory
        self.timeout = timeout
        self.base_images = dict(base_images or {})
        self.on_change = on_change or (lambda b: None)
        self.builds = builds or (lambda app: [])  # an app's earlier builds, from the state
        # Bounding what builds leave behind: records (forget_builds) and logs (<log_dir>/<id>.log).
        self.forget_builds = forget_builds
        self.log_dir = log_dir
        self.keep_builds = keep_builds  # 0: keep every build
        self._queue: asyncio.Queue[BuildJob] = asyncio.Queue()
        self.jobs: dict[str, BuildJob] = {}  # queued or running

    def busy(self) -> bool:
        """Whether a build is queued or running."""
        return bool(self.jobs)

    def cancel(self, app: str, build_id: str | None = None) -> list[str]:
        """Cancel an app's queued or running builds (a running one stops at its next output line)."""
        cancelled = []
        for job in list(self.jobs.values()):
            if job.build.app == app and (build_id is None or job.build.id.startswith(build_id)):
                job.cancelled = True
                cancelled.append(job.build.id)
        return cancelled

    def submit(self, app: str, context: Path, output: LogBuffer, build_args: dict[str, str] | None = None) -> BuildJob:
        build = Build(id=uuid.uuid4().hex[:12], app=app)
        job = BuildJob(
            build=build,
            context=context,
            tag=f"lbsolo/{app}:build-{build.id}",
            output=output,
            build_args=dict(build_args or {}),
        )
        self.jobs[build.id] = job
        self.on_change(build)
        self._queue.put_nowait(job)
        return job

    async def run(self) -> None:
        """The worker: takes builds off the queue until cancelled."""
        while True:
            job = await self._queue.get()
            try:
                await self._build(job)
            finally:
                self._queue.task_done()

    def forget_old_builds(self, build: Build, busy: Iterable[str] = ()) -> list[str]:
        """Forget the app's builds beyond keep_builds, counting `build`: their records and logs.

        Blocking (the state and the disk): call it through to_thread, with `busy` (the ids of
        queued and running builds, never forgotten) read on the loop.
        """
        if self.keep_builds <= 0:
            return []
        known = [b for b in self.builds(build.app) if b.id != build.id]
        old = builds_to_forget([*known, build], self.keep_builds, busy)
        ids = [b.id for b in old]
        if ids and self.forget_builds is not None:
            self.forget_builds(build.app, ids)
        if self.log_dir is not None:
            for build_id in ids:
                (self.log_dir / f"{build_id}.log").unlink(missing_ok=True)
        return ids

    def _reusable_image(self, app: str, source: str) -> str | None:
        for image in reusable_images(self.builds(app), source):
            if self.engine.image_exists(image):  # image retention may have removed it since
                return image
        return None

    async def _build(self, job: BuildJob) -> None:
        loop = asyncio.get_running_loop()
        build = job.build
        build.status = BuildStatus.RUNNING
        self.on_change(build)

        def on_line(line: str) -> None:
            if job.cancelled:  # raised in the build thread: the engine's stream is abandoned
                raise BuildFailed("the build was cancelled")
            loop.call_soon_threadsafe(job.output.append, line)

        try:
            if job.cancelled:
                raise BuildFailed("the build was cancelled before it started")
            try:
                await asyncio.to_thread(self.forget_old_builds, build, list(self.jobs))
            except (OSError, LbsoloError) as e:  # a full disk: the build itself may still work
                log.warning("forgetting old builds of %s failed: %s", build.app, e)
            spec, has_dockerfile = await asyncio.to_thread(check_context, job.context)
            if not has_dockerfile:
                images = {**self.base_images, **spec.base_images}
                detection = await asyncio.to_thread(add_generated_dockerfile, job.context, images)
                on_line(f"-----> No Dockerfile: detected {detection.kind} ({'; '.join(detection.reasons)})")
                spec = replace(spec, processes={**detection.processes, **spec.processes})
            build.source = source = await asyncio.to_thread(file_digest, job.context)
            image = await asyncio.to_thread(self._reusable_image, build.app, source)
            if image is not None:
                on_line(f"-----> Same source as an earlier build ({source[:12]}): re-using its image, no build")
            else:
                await asyncio.to_thread(label_context, job.context, self.engine.base_labels(build.app))
                with job.context.open("rb") as f:
                    image = await asyncio.to_thread(
                        self.engine.build,
                        f,
                        app=build.app,
                        tag=job.tag,
                        build_args={**spec.build_args, **job.build_args},
                        memory=self.memory,
                        timeout=self.timeout,
                        on_line=on_line,
                    )
        except LbsoloError as e:
            build.status, build.error = BuildStatus.FAILED, e.message
            if not job.done.done():
                job.done.set_exception(e if isinstance(e, InvalidInput) else BuildFailed(e.message))
        except Exception as e:  # the worker must survive anything one build does
            log.exception("build %s crashed", build.id)
            build.status, build.error = BuildStatus.FAILED, str(e)
            if not job.done.done():
                job.done.set_exception(BuildFailed(f"build crashed: {e}"))
        else:
            build.status, build.image = BuildStatus.SUCCEEDED, image
            if not job.done.done():
                job.done.set_result((image, spec))
        finally:
            self.jobs.pop(build.id, None)
            build.finished_at = now()
            self.on_change(build)
            with contextlib.suppress(OSError):
                job.context.unlink()
