"""Client-side encryption of add-on backups sent to a bucket: AES-256-GCM over fixed-size chunks.

An encrypted object is a header — magic, format version, the key's id, the chunk size and a
random 8-byte nonce prefix — then the dump in chunks of `chunk_size` bytes (the last one shorter,
possibly empty), each sealed on its own: its nonce is the prefix and its index, and its
associated data the whole header, its index and a flag saying whether it is the last. So a
chunk moved elsewhere, a chunk dropped, or an object cut after any chunk fails to open, and so
does a changed header. The key's id (a hash of the key, not the key) tells a wrong key from a
tampered object before anything is decrypted.

Pure: it reads and writes through the callables it is given and never touches a file, a socket
or the state; where keys are kept and objects go is core_addon_backup_remote.py's and
addon_backup_remote.py's. The cryptography package is imported here only.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from lbsolo.errors import InvalidInput

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def _aesgcm(key: bytes) -> AESGCM:
    # cryptography costs the idle daemon ~7 MB: imported when a backup is sealed or opened, not at start.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)

MAGIC = b"LBSENC"
VERSION = 1
KEY_BYTES = 32  # AES-256
TAG_BYTES = 16
CHUNK_SIZE = 1024 * 1024
_HEADER = struct.Struct(">6sB8sI8s")  # magic, version, key id, chunk size, nonce prefix
HEADER_BYTES = _HEADER.size
MAX_CHUNK = 64 * 1024 * 1024  # a header asking for more is not one of ours

Read = Callable[[int], bytes]


class DecryptFailed(InvalidInput):
    """An object that does not open: another key, not encrypted by lbsolo, tampered or cut short."""

    code = "decrypt_failed"


def generate_key() -> bytes:
    return os.urandom(32)  # what AESGCM.generate_key(256) returns


def parse_key(data: bytes) -> bytes:
    """A key file's content: 32 raw bytes, or 64 hex characters (surrounding whitespace ignored)."""
    if len(data) == KEY_BYTES:
        return bytes(data)
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise InvalidInput(f"a backup key is 32 raw bytes or 64 hex characters; this one is {len(data)} bytes of neither")


def key_id(key: bytes) -> str:
    """A name for the key that does not give it away: 16 hex characters of a hash of it."""
    return hashlib.sha256(b"lbsolo backup key id\0" + key).hexdigest()[:16]


def encrypted_size(plain_size: int, chunk_size: int = CHUNK_SIZE) -> int:
    chunks = max(1, -(-plain_size // chunk_size))
    return HEADER_BYTES + plain_size + chunks * TAG_BYTES


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">QB", index, 1 if final else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= 2**32:
        raise InvalidInput("the object has too many chunks for one nonce prefix")
    return prefix + struct.pack(">I", index)


def read_exact(read: Read, n: int) -> bytes:
    """Up to n bytes, fewer only at the end of the stream (a short read is read again)."""
    parts, got = [], 0
    while got < n:
        piece = read(n - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def encrypt(read: Read, key: bytes, chunk_size: int = CHUNK_SIZE, nonce_prefix: bytes | None = None) -> Iterator[bytes]:
    """The encrypted object, piece by piece: the header, then one sealed chunk per `chunk_size` read."""
    if len(key) != KEY_BYTES:
        raise InvalidInput("a backup key is 32 bytes")
    if not 0 < chunk_size <= MAX_CHUNK:
        raise InvalidInput(f"a chunk size is between 1 and {MAX_CHUNK} bytes")
    prefix = nonce_prefix if nonce_prefix is not None else os.urandom(8)
    header = _HEADER.pack(MAGIC, VERSION, bytes.fromhex(key_id(key)), chunk_size, prefix)
    yield header
    aead = _aesgcm(key)
    index, chunk = 0, read_exact(read, chunk_size)
    while True:
        following = read_exact(read, chunk_size) if len(chunk) == chunk_size else b""
        final = not following
        yield aead.encrypt(_nonce(prefix, index), chunk, _aad(header, index, final))
        if final:
            return
        index, chunk = index + 1, following


def decrypt(read: Read, key: bytes) -> Iterator[bytes]:
    """The plain bytes of an encrypted object, chunk by chunk; DecryptFailed (before the first
    byte for a wrong key or a foreign object, at the bad chunk for a tampered or cut one)."""
    header = read_exact(read, HEADER_BYTES)
    if len(header) < HEADER_BYTES or not header.startswith(MAGIC):
        raise DecryptFailed("the object is not an lbsolo-encrypted backup (no header): was it encrypted?")
    _magic, version, kid, chunk_size, prefix = _HEADER.unpack(header)
    if version != VERSION:
        raise DecryptFailed(f"the object is encrypted in format {version}; this lbsolo reads {VERSION}")
    if kid.hex() != key_id(key):
        raise DecryptFailed(
            f"the object was encrypted with another key (key id {kid.hex()}; this key's is {key_id(key)})"
        )
    if not 0 < chunk_size <= MAX_CHUNK:
        raise DecryptFailed("the object's header is damaged (its chunk size makes no sense)")
    from cryptography.exceptions import InvalidTag

    aead, sealed = _aesgcm(key), chunk_size + TAG_BYTES
    index, chunk = 0, read_exact(read, sealed)
    while True:
        if len(chunk) < TAG_BYTES:
            raise DecryptFailed(f"the object is cut short (chunk {index} is missing): it is incomplete or tampered")
        following = read_exact(read, sealed) if len(chunk) == sealed else b""
        final = not following
        try:
            plain = aead.decrypt(_nonce(prefix, index), chunk, _aad(header, index, final))
        except InvalidTag:
            if final:
                raise DecryptFailed(
                    f"the object does not open at chunk {index}: it is cut short or tampered with"
                ) from None
            raise DecryptFailed(f"the object does not open at chunk {index}: it was tampered with") from None
        yield plain
        if final:
            return
        index, chunk = index + 1, following


class IterReader:
    """A file-like `read(n)` over an iterator of byte strings (what an upload reads from)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = bytearray()
        self._done = False

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buffer) < n):
            try:
                self._buffer += next(self._pieces)
            except StopIteration:
                self._done = True
        if n < 0:
            n = len(self._buffer)
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out
