"""An add-on's backup target: an S3-compatible bucket, and the objects lbsolo keeps in it.

`Target` is the bucket's address and credentials as the add-on record keeps them, checked when
parsed (an s3:// URL with a bucket, an http(s) endpoint). `RemoteStore` puts, lists, reads and
deletes objects under `<prefix>/<add-on>/` with the minio client: uploads are streamed from
disk (multipart in parts of `part_size`, one part in memory at a time), optionally through
addon_backup_crypt's sealing; downloads are streamed to a file. Every failure of the library or
the network becomes one RemoteError with a one-line message (unreachable endpoint, refused
credentials, missing bucket, …).

This module owns the minio library, imported only when a store is used, so a daemon without a
target never loads it. Blocking: callers in the event loop go through asyncio.to_thread. It
decides nothing about backups (core_addon_backup_remote.py does) and touches no state.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lbsolo import addon_backup_crypt as crypt
from lbsolo.errors import InvalidInput, LbsoloError, NotFound
from lbsolo.models import MASK

if TYPE_CHECKING:  # pragma: no cover
    from minio import Minio

PART_SIZE = 16 * 1024 * 1024  # S3's smallest part is 5 MiB
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_MANIFEST = 1024 * 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class RemoteError(LbsoloError):
    """The bucket could not be used: unreachable, refused, missing, or an upload or download failed."""

    code = "remote_storage"
    status = 502

    def __init__(self, message: str) -> None:
        # The words of a server or a socket may hold brackets, which the CLI would read as markup.
        super().__init__(message.replace("[", "(").replace("]", ")"))


@dataclass(frozen=True)
class Target:
    """Where an add-on's backups go: s3://bucket/prefix at an endpoint, with its credentials."""

    bucket: str
    prefix: str
    endpoint: str
    region: str | None
    access_key_id: str
    secret_access_key: str

    @classmethod
    def parse(
        cls, url: str, endpoint: str, region: str | None, access_key_id: str | None, secret_access_key: str | None
    ) -> Target:
        u = urlsplit(url.strip())
        if u.scheme != "s3" or not u.netloc:
            raise InvalidInput(f"a backup target is s3://BUCKET or s3://BUCKET/PREFIX, not {url!r}")
        if not _BUCKET.match(u.netloc):
            raise InvalidInput(f"{u.netloc!r} is not a bucket name (3-63 lowercase letters, digits, dots, dashes)")
        e = urlsplit(endpoint.strip())
        if e.scheme not in ("http", "https") or not e.hostname:
            raise InvalidInput(f"the endpoint is an http:// or https:// URL, not {endpoint!r}")
        if e.path not in ("", "/") or e.query:
            raise InvalidInput(f"the endpoint is a scheme, a host and a port, without a path: {endpoint!r}")
        try:
            e.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            raise InvalidInput(f"the endpoint's port is not a number: {endpoint!r}") from None
        if not access_key_id or not secret_access_key:
            raise InvalidInput(
                "the bucket's credentials are missing: --access-key-id and --secret-access-key "
                "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        return cls(
            bucket=u.netloc,
            prefix=u.path.strip("/"),
            endpoint=f"{e.scheme}://{e.netloc}",
            region=region or None,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def public(self) -> dict[str, Any]:
        """As outputs show it: the credentials masked."""
        return {"url": self.url, "endpoint": self.endpoint, "region": self.region, "access_key_id": MASK,
                "secret_access_key": MASK}  # fmt: skip


@dataclass
class Stored:
    """One object in the bucket."""

    key: str
    size: int


class RemoteStore:
    """The objects of one target, through the minio client (made on first use)."""

    def __init__(self, target: Target, *, part_size: int = PART_SIZE, timeout: float = 5.0) -> None:
        if part_size < MIN_PART_SIZE:
            raise InvalidInput(f"a part is at least {MIN_PART_SIZE} bytes (S3's smallest)")
        self.target = target
        self.part_size = part_size
        self.timeout = timeout
        self._client: Minio | None = None

    def _minio(self) -> Minio:
        if self._client is None:
            import urllib3
            from minio import Minio

            t = self.target
            u = urlsplit(t.endpoint)
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=self.timeout, read=max(60.0, self.timeout)),
                retries=urllib3.Retry(total=2, connect=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
                maxsize=4,
            )
            self._client = Minio(
                u.netloc, access_key=t.access_key_id, secret_key=t.secret_access_key,
                secure=u.scheme == "https", region=t.region, http_client=http,
            )  # fmt: skip
        return self._client

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """fn's result; every failure of minio or the network as one RemoteError (NotFound for a missing key)."""
        from minio.error import MinioException, S3Error
        from urllib3.exceptions import HTTPError

        t = self.target
        try:
            return fn()
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                raise NotFound(f"{what}: no such object in {t.url}") from e
            if e.code == "NoSuchBucket":
                raise RemoteError(f"{what}: the bucket {t.bucket} does not exist at {t.endpoint}") from e
            if e.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken"):
                raise RemoteError(
                    f"{what}: {t.endpoint} refused the credentials ({e.code}): check the access key id and secret"
                ) from e
            raise RemoteError(f"{what}: {t.endpoint} answered {e.code}: {e.message}") from e
        except (MinioException, ValueError, SyntaxError) as e:  # xml's ParseError is a SyntaxError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RemoteError(f"{what}: {t.endpoint} does not answer like S3: {first[:200]}") from e
        except HTTPError as e:
            reason = getattr(e, "reason", None) or e
            raise RemoteError(f"{what}: cannot reach {t.endpoint}: {_one_line(reason)}") from e
        except OSError as e:
            raise RemoteError(f"{what}: {t.endpoint}: {_one_line(e)}") from e

    # ---- checking
    def check(self) -> None:
        """Write a small object and delete it: the endpoint answers, the credentials work, the bucket exists."""
        key = self.target.key(f".lbsolo-check-{uuid.uuid4().hex[:12]}")
        m = self._minio()
        self._call("checking the target", lambda: m.put_object(self.target.bucket, key, io.BytesIO(b"ok"), 2))
        self._call("checking the target", lambda: m.remove_object(self.target.bucket, key))

    # ---- objects
    def upload(self, path: Path, key: str, *, seal_with: bytes | None = None, head: bytes = b"") -> dict[str, Any]:
        """Stream a file to key (sealed with the key seal_with, if given, after the bytes `head`:
        a platform backup's own header); its size and etag there."""
        m, bucket = self._minio(), self.target.bucket
        what = f"uploading {path.name}"
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if seal_with is None:
                data: Any = f
                length = size
            else:
                data = crypt.IterReader(itertools.chain([head] if head else [], crypt.encrypt(f.read, seal_with)))
                length = len(head) + crypt.encrypted_size(size)
            result = self._call(what, lambda: m.put_object(
                bucket, key, data, length, part_size=self.part_size, num_parallel_uploads=1,
            ))  # fmt: skip
        stat = self._call(what, lambda: m.stat_object(bucket, key))
        if stat.size != length:
            raise RemoteError(f"{what}: the bucket holds {stat.size} bytes of {key}, not the {length} sent")
        return {"etag": result.etag, "size": length}

    def put_bytes(self, key: str, data: bytes) -> None:
        m = self._minio()
        self._call(f"uploading {key}", lambda: m.put_object(self.target.bucket, key, io.BytesIO(data), len(data)))

    def read_bytes(self, key: str, limit: int = MAX_MANIFEST) -> bytes:
        """A small object whole (a manifest); an object over limit is refused."""
        with self._open(key) as read:
            data = read(limit + 1)
        if len(data) > limit:
            raise RemoteError(f"{key} is over {limit} bytes: not a manifest")
        return data

    def download(self, key: str, dest: Path, *, open_with: bytes | None = None) -> int:
        """Stream key into the file dest (opened with the key open_with, if given); the bytes written.
        A failure part way leaves dest for the caller to remove."""
        written = 0
        with self._open(key) as read, open(dest, "wb", 1024 * 1024) as f:
            pieces: Iterator[bytes] = (
                iter(lambda: read(1024 * 1024), b"") if open_with is None else crypt.decrypt(read, open_with)
            )
            while True:
                piece = self._call(f"downloading {key}", lambda: next(pieces, None))
                if piece is None:
                    break
                f.write(piece)
                written += len(piece)
            f.flush()
            os.fsync(f.fileno())
        return written

    def _open(self, key: str) -> _Opened:
        m = self._minio()
        return _Opened(self, self._call(f"downloading {key}", lambda: m.get_object(self.target.bucket, key)))

    def list(self, prefix: str) -> list[Stored]:
        """The objects under prefix (a folder: `<prefix>/<add-on>/`)."""
        m, bucket = self._minio(), self.target.bucket
        folder = prefix.rstrip("/") + "/" if prefix else ""
        objects = self._call(f"listing {folder}", lambda: list(m.list_objects(bucket, prefix=folder, recursive=True)))
        return [Stored(o.object_name, int(o.size or 0)) for o in objects if not o.is_dir]

    def delete(self, key: str) -> None:
        m = self._minio()
        self._call(f"deleting {key}", lambda: m.remove_object(self.target.bucket, key))


class _Opened:
    """A GET's body as `read(n)`, its connection released on exit."""

    def __init__(self, store: RemoteStore, response: Any) -> None:
        self.store, self.response = store, response

    def __enter__(self) -> Callable[[int], bytes]:
        return lambda n: self.store._call("downloading", lambda: self.response.read(n))

    def __exit__(self, *exc: object) -> None:
        self.response.close()
        self.response.release_conn()


def _one_line(e: object) -> str:
    text = str(e).strip().splitlines()
    line = text[-1] if text else type(e).__name__
    # urllib3 wraps the socket error in its pool's description: keep the socket's own words.
    found = re.search(r"\[Errno -?\d+\] [^'\"\)]+", line)
    return (found.group(0) if found else line)[:200]
