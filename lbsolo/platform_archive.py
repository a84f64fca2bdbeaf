"""The whole-platform backup's file format: a tar stream with its manifest first, optionally sealed.

A backup is a tar stream (written and read with tarfile's stream modes, so never held whole):
`manifest.json` first — the format, lbsolo's version, the state's schema, when it was made, the
instance it came from, and every entry in order with its size, sha256, kind and what it belongs
to — then each entry as one regular file. Entries are files staged beforehand (a directory such
as the TLS one is staged as a tar of its own), which is how the manifest can come first with
every checksum in it.

Reading checks before anything lands where it matters: the manifest's format, version and schema
(a backup from a newer lbsolo is refused), free space against the manifest's sizes, then every
entry against its size and sha256 as it is copied into a staging directory; a member out of
order, a missing one, an extra one, a cut stream or a changed byte is refused there. The caller
moves the staged files into place only once `read_archive` has returned.

An encrypted backup is a short header — MAGIC, how its key is made (a key file, or scrypt over a
passphrase with the salt and cost given) — then the tar stream sealed in chunks by
addon_backup_crypt (AES-256-GCM; a wrong key is told from a tampered file by the key's id).
scrypt is the standard library's; cryptography is imported only when sealing or opening.

No engine call, no state, no network: files and byte streams only (the I/O is the caller's).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from lbsolo import addon_backup_crypt as crypt
from lbsolo.errors import DiskFull, InvalidInput

FORMAT = 1
MANIFEST = "manifest.json"
MAX_MANIFEST = 16 * 1024 * 1024
MAGIC = b"LBSPBAK\x01"
_ENC = struct.Struct(">8sB16sBBB")  # magic, kdf, salt, log2(N), r, p
KDF_KEY_FILE, KDF_SCRYPT = 0, 1
SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P = 15, 8, 1  # ~32 MiB and ~0.1 s per derivation
DISK_MARGIN = 64 * 1024 * 1024
COPY = 1024 * 1024


class BadBackup(InvalidInput):
    """A backup that cannot be restored as it is: cut short, changed, or not one of ours."""

    code = "bad_backup"


class NewerBackup(InvalidInput):
    code = "newer_backup"


class Writable(Protocol):
    def write(self, data: bytes, /) -> Any: ...


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass
class Entry:
    """One file of the backup: its name in the archive, size, checksum, kind and owner."""

    name: str
    size: int
    sha256: str
    kind: str  # state | token | dir | volume | images | addon
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        try:
            return cls(str(d["name"]), int(d["size"]), str(d["sha256"]), str(d["kind"]), dict(d.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise BadBackup(f"the backup's manifest has a malformed entry ({e})") from None


@dataclass
class Manifest:
    lbsolo: str
    schema: int
    instance: str
    created: float = field(default_factory=time.time)
    format: int = FORMAT
    entries: list[Entry] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        try:
            d = json.loads(raw)
            return cls(
                lbsolo=str(d["lbsolo"]),
                schema=int(d["schema"]),
                instance=str(d["instance"]),
                created=float(d["created"]),
                format=int(d["format"]),
                entries=[Entry.from_dict(e) for e in d["entries"]],
            )
        except (ValueError, KeyError, TypeError) as e:
            raise BadBackup(f"the backup's manifest is unreadable ({e}): not an lbsolo backup, or damaged") from None

    @property
    def total(self) -> int:
        return sum(e.size for e in self.entries)


def file_entry(path: Path, name: str, kind: str, **meta: Any) -> Entry:
    """An entry for a staged file: its size and sha256, read once."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while piece := f.read(COPY):
            digest.update(piece)
            size += len(piece)
    return Entry(name, size, digest.hexdigest(), kind, meta)


def tar_directory(source: Path, out: Path) -> bool:
    """Stage a directory as one tar file (paths relative to it); False when there is no such directory."""
    if not source.is_dir():
        return False
    with tarfile.open(out, "w") as tf:
        for path in sorted(source.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            tf.add(path, arcname=str(path.relative_to(source)), recursive=False)
    return True


def untar_directory(archive: Path, dest: Path) -> None:
    """Unpack a staged directory tar into dest; only plain files and directories inside dest."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r") as tf:
        tf.extractall(dest, filter="data")


# ---- writing


def write_archive(out: Writable, manifest: Manifest, files: Iterable[tuple[Entry, Path]]) -> int:
    """The whole archive onto `out`, streamed: the manifest, then each staged file; bytes of data written."""
    pairs = list(files)
    manifest.entries = [e for e, _ in pairs]
    written = 0
    # bufsize: the pieces handed to `out` (the daemon's answer) are about 1 MB, not tarfile's 10 KB.
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=COPY) as tf:  # type: ignore[call-overload]
        raw = manifest.to_bytes()
        tf.addfile(_info(MANIFEST, len(raw), manifest.created), io.BytesIO(raw))
        for entry, path in pairs:
            with open(path, "rb") as f:
                tf.addfile(_info(entry.name, entry.size, manifest.created), f)
            written += entry.size
    return written


def _info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(mtime)
    return info


class Sealer:
    """A writable that seals what is written in addon_backup_crypt's chunked format, onto `out`.

    Push mode for tarfile's writes: a full chunk is sealed once more bytes follow it (so it is
    known not to be the last); close() seals the rest as the final chunk — the same bytes
    addon_backup_crypt.encrypt gives for the same input, key and nonce prefix."""

    def __init__(self, out: Writable, key: bytes, chunk_size: int = crypt.CHUNK_SIZE) -> None:
        prefix = os.urandom(8)
        self._out, self._size = out, chunk_size
        self._pending = bytearray()
        self._index = 0
        pieces = crypt.encrypt(io.BytesIO(b"").read, key, chunk_size, prefix)
        self._header = next(pieces)
        pieces.close()
        self._aead = crypt._aesgcm(key)
        self._prefix = prefix
        out.write(self._header)

    def _seal(self, chunk: bytes, final: bool) -> None:
        nonce = crypt._nonce(self._prefix, self._index)
        self._out.write(self._aead.encrypt(nonce, chunk, crypt._aad(self._header, self._index, final)))
        self._index += 1

    def write(self, data: bytes) -> int:
        self._pending += data
        while len(self._pending) > self._size:
            self._seal(bytes(self._pending[: self._size]), final=False)
            del self._pending[: self._size]
        return len(data)

    def close(self) -> None:
        self._seal(bytes(self._pending), final=True)
        self._pending.clear()


def derive_key(passphrase: str, salt: bytes, log_n: int = SCRYPT_LOG_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> bytes:
    if not passphrase:
        raise InvalidInput("the passphrase is empty")
    n = 1 << log_n
    return hashlib.scrypt(passphrase.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * r * n + (1 << 20), dklen=32)


def sealed_header(kdf: int, salt: bytes = b"\0" * 16) -> bytes:
    return _ENC.pack(MAGIC, kdf, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)


# ---- reading


KeyFor = Callable[[int, bytes, int, int, int], bytes]  # (kdf, salt, log2 N, r, p) -> the key


class _Prefixed:
    def __init__(self, head: bytes, src: Readable) -> None:
        self._head, self._src = head, src

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out = self._head if n < 0 or n >= len(self._head) else self._head[:n]
            self._head = self._head[len(out) :]
            return out
        return self._src.read(n)


def is_sealed(head: bytes) -> bool:
    return head.startswith(MAGIC)


def open_source(src: Readable, key_for: KeyFor) -> Readable:
    """The plain tar stream of a backup: as it is, or opened with the key `key_for` makes."""
    head = crypt.read_exact(src.read, _ENC.size)
    if not is_sealed(head):
        return _Prefixed(head, src)
    if len(head) < _ENC.size:
        raise BadBackup("the backup is cut short (its encryption header is incomplete)")
    _magic, kdf, salt, log_n, r, p = _ENC.unpack(head)
    if kdf not in (KDF_KEY_FILE, KDF_SCRYPT) or not (10 <= log_n <= 24 and 0 < r <= 32 and 0 < p <= 16):
        raise BadBackup("the backup's encryption header is damaged")
    key = key_for(kdf, salt, log_n, r, p)
    plain = crypt.decrypt(src.read, key)
    try:
        first = next(plain)  # a wrong key is told here, before anything is staged
    except crypt.DecryptFailed as e:
        raise _wrong_key(e, kdf) from None
    except StopIteration:
        first = b""

    def pieces() -> Iterable[bytes]:
        yield first
        try:
            yield from plain
        except crypt.DecryptFailed as e:
            raise BadBackup(f"the backup does not open: {e.message}") from None

    return crypt.IterReader(iter(pieces()))


def _wrong_key(e: crypt.DecryptFailed, kdf: int) -> BadBackup:
    if "another key" in e.message:
        what = "passphrase" if kdf == KDF_SCRYPT else "key file"
        return BadBackup(f"wrong {what}: the backup was encrypted with another one")
    return BadBackup(f"the backup does not open: {e.message}")


def check_manifest(m: Manifest, version: str, schema: int) -> None:
    """Refuse a backup this lbsolo cannot restore: a newer format, state schema or lbsolo."""
    if m.format > FORMAT:
        raise NewerBackup(f"the backup is in format {m.format}, made by lbsolo {m.lbsolo}; this one ({version}) "
                          f"reads up to {FORMAT}: restore it with lbsolo {m.lbsolo} or later")  # fmt: skip
    if m.schema > schema or _version(m.lbsolo) > _version(version):
        raise NewerBackup(f"the backup was made by lbsolo {m.lbsolo} (state schema {m.schema}); this is lbsolo "
                          f"{version} (schema {schema}): restore it with lbsolo {m.lbsolo} or later")  # fmt: skip
    names = [e.name for e in m.entries]
    if len(set(names)) != len(names) or MANIFEST in names:
        raise BadBackup("the backup's manifest names an entry twice")


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def read_archive(
    src: Readable,
    staging: Path,
    *,
    version: str,
    schema: int,
    needed: Callable[[Manifest], int] = lambda m: m.total,
    free: Callable[[Path], int] = free_bytes,
) -> tuple[Manifest, dict[str, Path]]:
    """Check and stage a backup: the manifest, the space, then every entry's size and sha256.

    Entries land in `staging` under their index (never a name from the archive); returns the
    manifest and where each entry's file is. Any problem raises before the caller moves anything."""
    staging.mkdir(parents=True, exist_ok=True)
    try:
        tf = tarfile.open(fileobj=src, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115 (closed below)
    except tarfile.ReadError as e:
        raise BadBackup(f"not an lbsolo backup (no tar stream: {e}); encrypted with an older format?") from None
    except crypt.DecryptFailed as e:
        raise BadBackup(f"the backup does not open: {e.message}") from None
    except EOFError:
        raise BadBackup("the backup is empty or cut short") from None
    paths: dict[str, Path] = {}
    try:
        with tf:
            members = _members(tf)
            first = next(members, None)
            if first is None or first.name != MANIFEST or not first.isfile() or first.size > MAX_MANIFEST:
                raise BadBackup("not an lbsolo backup: it does not begin with its manifest")
            manifest = Manifest.from_bytes(_read_member(tf, first))
            check_manifest(manifest, version, schema)
            need, have = needed(manifest) + DISK_MARGIN, free(staging)
            if have < need:
                raise DiskFull(f"not enough disk to restore: the backup needs {_mb(need)} and {staging} has "
                               f"{_mb(have)} free")  # fmt: skip
            for index, entry in enumerate(manifest.entries):
                member = next(members, None)
                if member is None:
                    raise BadBackup(f"the backup is cut short: {entry.name} and what follows are missing")
                if member.name != entry.name or not member.isfile():
                    raise BadBackup(f"the backup was changed: {member.name!r} where the manifest has {entry.name!r}")
                if member.size != entry.size:
                    raise BadBackup(f"the backup was changed: {entry.name} is {member.size} bytes, "
                                    f"the manifest says {entry.size}")  # fmt: skip
                path = staging / f"{index:05d}"
                _stage_member(tf, member, entry, path)
                paths[entry.name] = path
            extra = next(members, None)
            if extra is not None:
                raise BadBackup(f"the backup was changed: {extra.name!r} is not in its manifest")
    except (tarfile.TarError, EOFError) as e:
        raise BadBackup(f"the backup is cut short or damaged ({e})") from None
    return manifest, paths


def _members(tf: tarfile.TarFile) -> Any:
    while True:
        member = tf.next()
        if member is None:
            return
        yield member


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(member)
    data = f.read() if f is not None else b""
    if len(data) != member.size:
        raise BadBackup(f"the backup is cut short (in {member.name})")
    return data


def _stage_member(tf: tarfile.TarFile, member: tarfile.TarInfo, entry: Entry, path: Path) -> None:
    source = tf.extractfile(member)
    if source is None:
        raise BadBackup(f"the backup was changed: {entry.name} is not a file")
    digest, got = hashlib.sha256(), 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        while piece := source.read(COPY):
            digest.update(piece)
            out.write(piece)
            got += len(piece)
    if got != entry.size:
        raise BadBackup(f"the backup is cut short (in {entry.name}: {got} of {entry.size} bytes)")
    if digest.hexdigest() != entry.sha256:
        raise BadBackup(f"the backup was changed: {entry.name}'s checksum does not match its manifest")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def copy_stream(src: IO[bytes] | Readable, out: Writable) -> int:
    n = 0
    while piece := src.read(COPY):
        out.write(piece)
        n += len(piece)
    return n
