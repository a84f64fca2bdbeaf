"""The backup target's store on a real S3 server (moto's, on loopback, checking credentials):
upload, list, download, delete, a multipart upload of a file over one part, sealed uploads
opened again, and each way a target fails — wrong key, wrong secret, missing bucket, a port
nobody listens on, an endpoint that is not S3 — as one clear line."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from lbsolo import addon_backup_crypt as crypt
from lbsolo.addon_backup_remote import MIN_PART_SIZE, RemoteError, RemoteStore, Target
from lbsolo.errors import InvalidInput, NotFound
from tests.moto_s3 import MotoS3

BUCKET = "lbsolo-backups"


@pytest.fixture(scope="module")
def s3():
    server = MotoS3.start(auth=True)
    server.make_bucket(BUCKET)
    yield server
    server.stop()


def target(s3: MotoS3, url: str = f"s3://{BUCKET}/site", **change: str) -> Target:
    args = {"endpoint": s3.endpoint, "region": "us-east-1", "access_key_id": s3.access_key_id,
            "secret_access_key": s3.secret_access_key, **change}  # fmt: skip
    return Target.parse(url, args["endpoint"], args["region"], args["access_key_id"], args["secret_access_key"])


def one_line(e: pytest.ExceptionInfo) -> str:
    message = e.value.message
    assert "\n" not in message and len(message) < 300, message
    return message


def test_upload_list_download_delete(s3: MotoS3, tmp_path: Path) -> None:
    store = RemoteStore(target(s3))
    src = tmp_path / "a.dump"
    src.write_bytes(b"PGDMP" + os.urandom(1000))
    key = store.target.key("shop-db", "a.dump")
    assert key == "site/shop-db/a.dump"
    assert store.upload(src, key)["size"] == 1005
    store.put_bytes(store.target.key("shop-db", "a.json"), b'{"id": "a"}')
    listed = {o.key: o.size for o in store.list(store.target.key("shop-db"))}
    assert listed == {"site/shop-db/a.dump": 1005, "site/shop-db/a.json": 11}
    assert store.read_bytes("site/shop-db/a.json") == b'{"id": "a"}'
    out = tmp_path / "back.part"
    assert store.download(key, out) == 1005 and out.read_bytes() == src.read_bytes()
    store.delete(key)
    with pytest.raises(NotFound):
        store.download(key, tmp_path / "gone.part")
    assert [o.key for o in store.list("site/shop-db")] == ["site/shop-db/a.json"]


def test_a_file_over_one_part_goes_in_parts_and_comes_back_whole(s3: MotoS3, tmp_path: Path) -> None:
    store = RemoteStore(target(s3, f"s3://{BUCKET}"), part_size=MIN_PART_SIZE)
    src = tmp_path / "big.dump"
    with src.open("wb") as f:
        for _ in range(11):
            f.write(os.urandom(1024 * 1024))
    store.upload(src, "big.dump")
    head = s3.boto().head_object(Bucket=BUCKET, Key="big.dump")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's etag: 3 parts
    back = tmp_path / "big.part"
    store.download("big.dump", back)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_sealed_upload_is_unreadable_in_the_bucket_and_opens_with_its_key(s3: MotoS3, tmp_path: Path) -> None:
    store = RemoteStore(target(s3), part_size=MIN_PART_SIZE)
    key, other = crypt.generate_key(), crypt.generate_key()
    src = tmp_path / "s.dump"
    src.write_bytes(b"PGDMP" + os.urandom(6 * 1024 * 1024))
    sent = store.upload(src, "site/x/s.dump", seal_with=key)
    assert sent["size"] == crypt.encrypted_size(src.stat().st_size)
    raw = s3.boto().get_object(Bucket=BUCKET, Key="site/x/s.dump")["Body"].read()
    assert raw.startswith(crypt.MAGIC) and not raw.startswith(b"PGDMP")
    back = tmp_path / "s.part"
    store.download("site/x/s.dump", back, open_with=key)
    assert back.read_bytes() == src.read_bytes()
    with pytest.raises(crypt.DecryptFailed, match="another key"):
        store.download("site/x/s.dump", tmp_path / "w.part", open_with=other)
    tampered = bytearray(raw)
    tampered[len(raw) // 2] ^= 1
    s3.boto().put_object(Bucket=BUCKET, Key="site/x/t.dump", Body=bytes(tampered))
    with pytest.raises(crypt.DecryptFailed, match="tampered"):
        store.download("site/x/t.dump", tmp_path / "t.part", open_with=key)


def test_check_passes_and_leaves_nothing(s3: MotoS3) -> None:
    store = RemoteStore(target(s3, f"s3://{BUCKET}/checked"))
    store.check()
    assert store.list("checked") == []


def test_wrong_credentials_are_one_clear_line(s3: MotoS3) -> None:
    with pytest.raises(RemoteError) as e:
        RemoteStore(target(s3, access_key_id="AKIANOSUCHKEY")).check()
    assert "refused the credentials (InvalidAccessKeyId)" in one_line(e)
    with pytest.raises(RemoteError) as e:
        RemoteStore(target(s3, secret_access_key="wrong")).check()
    assert "refused the credentials (SignatureDoesNotMatch)" in one_line(e)


def test_a_missing_bucket_is_named(s3: MotoS3) -> None:
    with pytest.raises(RemoteError) as e:
        RemoteStore(target(s3, "s3://no-such-bucket/x")).check()
    assert "the bucket no-such-bucket does not exist" in one_line(e)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_endpoint_is_named(s3: MotoS3) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteError) as e:
        RemoteStore(target(s3, endpoint=endpoint), timeout=2).check()
    message = one_line(e)
    assert f"cannot reach {endpoint}" in message and "Connection refused" in message


def test_an_endpoint_that_is_not_s3_is_named(s3: MotoS3, tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    import threading

    def answer() -> None:
        for _ in range(4):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        with pytest.raises(RemoteError) as e:
            RemoteStore(target(s3, endpoint=f"http://127.0.0.1:{port}"), timeout=2).list("x")
        assert f"127.0.0.1:{port}" in one_line(e)
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("url", "endpoint", "said"),
    [
        ("s3://", "http://127.0.0.1:9000", "s3://BUCKET"),
        ("s3:///prefix", "http://127.0.0.1:9000", "s3://BUCKET"),
        ("https://bucket/x", "http://127.0.0.1:9000", "s3://BUCKET"),
        ("s3://Bad_Bucket", "http://127.0.0.1:9000", "not a bucket name"),
        ("s3://bucket", "ftp://127.0.0.1:9000", "http:// or https://"),
        ("s3://bucket", "127.0.0.1:9000", "http:// or https://"),
        ("s3://bucket", "http://127.0.0.1:9000/path", "without a path"),
        ("s3://bucket", "http://127.0.0.1:port", "port is not a number"),
    ],
)
def test_bad_targets_are_refused(url: str, endpoint: str, said: str) -> None:
    with pytest.raises(InvalidInput, match=said.replace("/", "/")) as e:
        Target.parse(url, endpoint, None, "a", "b")
    one_line(e)


def test_a_target_without_credentials_is_refused() -> None:
    with pytest.raises(InvalidInput, match="credentials are missing"):
        Target.parse("s3://bucket", "http://127.0.0.1:9000", None, "", "b")


def test_a_target_shows_no_credentials() -> None:
    t = Target.parse("s3://bucket/a/b/", "https://s3.example.com", "eu-west-1", "AKIAKEY", "SECRET")
    assert t.url == "s3://bucket/a/b" and t.key("db", "1.dump") == "a/b/db/1.dump"
    assert "AKIAKEY" not in str(t.public()) and "SECRET" not in str(t.public())
    assert Target.from_dict(t.to_dict()) == t


def test_the_add_on_record_keeps_its_target_and_shows_it_masked() -> None:
    from lbsolo.models_addons import Addon

    t = Target.parse("s3://bucket/p", "http://127.0.0.1:9000", None, "AKIAKEY", "SECRET")
    addon = Addon(name="db", kind="postgres", version="15", backup_target={**t.to_dict(), "encrypt": True})
    back = Addon.from_dict(addon.to_dict())
    assert back.backup_target == addon.backup_target
    shown = str(back.public())
    assert "AKIAKEY" not in shown and "SECRET" not in shown and "s3://" not in shown and "bucket" in shown
