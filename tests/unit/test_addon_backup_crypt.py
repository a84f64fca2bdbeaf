"""The backups' client-side encryption: round trips, and every way an object may not open —
another key, truncation at or inside a chunk, chunks swapped or dropped, a byte changed, a
changed header, a foreign object — each a DecryptFailed with a clear message."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbsolo import addon_backup_crypt as crypt
from lbsolo.errors import InvalidInput

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def seal(data: bytes, key: bytes = KEY, chunk: int = 16) -> bytes:
    return b"".join(crypt.encrypt(io.BytesIO(data).read, key, chunk))


def opened(blob: bytes, key: bytes = KEY) -> bytes:
    return b"".join(crypt.decrypt(io.BytesIO(blob).read, key))


@given(data=st.binary(max_size=300), chunk=st.integers(min_value=1, max_value=64))
@settings(max_examples=200, deadline=None)
def test_round_trip(data: bytes, chunk: int) -> None:
    blob = seal(data, chunk=chunk)
    assert len(blob) == crypt.encrypted_size(len(data), chunk)
    assert opened(blob) == data
    assert len(data) < 8 or data not in blob[crypt.HEADER_BYTES :]


@given(data=st.binary(min_size=1, max_size=200), chunk=st.integers(min_value=1, max_value=32), cut=st.data())
@settings(max_examples=200, deadline=None)
def test_any_truncation_fails(data: bytes, chunk: int, cut: st.DataObject) -> None:
    blob = seal(data, chunk=chunk)
    n = cut.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    with pytest.raises(crypt.DecryptFailed):
        opened(blob[:n])


@given(data=st.binary(min_size=1, max_size=200), where=st.data())
@settings(max_examples=200, deadline=None)
def test_any_changed_byte_fails(data: bytes, where: st.DataObject) -> None:
    blob = bytearray(seal(data))
    i = where.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    blob[i] ^= where.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(crypt.DecryptFailed):
        opened(bytes(blob))


def chunks_of(blob: bytes, chunk: int) -> tuple[bytes, list[bytes]]:
    sealed = chunk + crypt.TAG_BYTES
    body = blob[crypt.HEADER_BYTES :]
    return blob[: crypt.HEADER_BYTES], [body[i : i + sealed] for i in range(0, len(body), sealed)]


def test_a_cut_at_a_chunk_boundary_is_detected() -> None:
    header, parts = chunks_of(seal(b"a" * 64, chunk=16), 16)
    assert len(parts) == 4
    with pytest.raises(crypt.DecryptFailed, match="cut short or tampered"):
        opened(header + b"".join(parts[:2]))


def test_reordered_or_dropped_chunks_are_detected() -> None:
    header, parts = chunks_of(seal(bytes(range(64)), chunk=16), 16)
    with pytest.raises(crypt.DecryptFailed, match="chunk 0"):
        opened(header + parts[1] + parts[0] + parts[2] + parts[3])
    with pytest.raises(crypt.DecryptFailed, match="chunk 1"):
        opened(header + parts[0] + parts[2] + parts[3])


def test_chunks_of_another_object_with_the_same_key_do_not_fit() -> None:
    header, parts = chunks_of(seal(b"x" * 32, chunk=16), 16)
    _, others = chunks_of(seal(b"x" * 32, chunk=16), 16)
    with pytest.raises(crypt.DecryptFailed):
        opened(header + others[0] + parts[1])


def test_the_wrong_key_is_named_before_anything_is_decrypted() -> None:
    blob = seal(b"secret data")
    with pytest.raises(crypt.DecryptFailed, match="another key") as e:
        next(crypt.decrypt(io.BytesIO(blob).read, OTHER))
    assert crypt.key_id(KEY) in e.value.message and "\n" not in e.value.message


def test_a_plain_dump_is_not_taken_for_an_encrypted_one() -> None:
    with pytest.raises(crypt.DecryptFailed, match="not an lbsolo-encrypted"):
        opened(b"PGDMP\x01\x0e\x00" + b"\x00" * 100)
    with pytest.raises(crypt.DecryptFailed):
        opened(b"")


def test_the_same_data_never_seals_the_same() -> None:
    assert seal(b"same") != seal(b"same")


def test_keys_are_32_raw_bytes_or_64_hex() -> None:
    key = crypt.generate_key()
    assert len(key) == 32 and key != crypt.generate_key()
    assert crypt.parse_key(key) == key
    assert crypt.parse_key(key.hex().encode() + b"\n") == key
    assert crypt.parse_key(b"  " + key.hex().upper().encode()) == key
    for bad in (b"", b"short", key[:31], key + b"x", b"z" * 64, key.hex()[:62].encode()):
        with pytest.raises(InvalidInput, match="32 raw bytes or 64 hex"):
            crypt.parse_key(bad)


def test_big_chunks_stream_through_a_reader() -> None:
    data = bytes(range(256)) * 4096 * 3  # 3 MiB: three 1 MiB chunks
    reader = crypt.IterReader(crypt.encrypt(io.BytesIO(data).read, KEY))
    blob = b"".join(iter(lambda: reader.read(100_000), b""))
    assert len(blob) == crypt.encrypted_size(len(data))
    assert opened(blob) == data
