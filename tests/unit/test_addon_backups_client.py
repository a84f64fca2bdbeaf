"""The CLI client's backup methods against the stand-in API of test_client: each sends its
operation; a dump is sent and written out in pieces, as it is read."""

from __future__ import annotations

import io

import pytest

from .test_client import JOB, OBJECT, api  # noqa: F401 (api: the fixture)

CALLS = [
    (lambda c: c.addon_backups("db"), OBJECT, "GET", "/api/addons/db/backups", None),
    (lambda c: list(c.backup_addon("db")), JOB, "POST", "/api/addons/db/backups", None),
    (lambda c: list(c.verify_backup("db", "20261205T080912Z")), JOB, "POST",
     "/api/addons/db/backups/20261205T080912Z/verify", None),
    (lambda c: list(c.restore_backup("db", "20261205T080912Z")), JOB, "POST",
     "/api/addons/db/backups/20261205T080912Z/restore", None),
    (lambda c: c.remove_backup("db", "20261205T080912Z"), OBJECT, "DELETE",
     "/api/addons/db/backups/20261205T080912Z", None),
    (lambda c: c.schedule_backups("db", "0 3 * * *", 7), OBJECT, "PUT", "/api/addons/db/backups/schedule",
     {"schedule": "0 3 * * *", "keep": 7}),
    (lambda c: list(c.import_dump("db", io.BytesIO(b"PGDMP" * 1000))), JOB, "POST", "/api/addons/db/import", None),
    (lambda c: c.export_dump("a/b", None, io.BytesIO()), b"PGDMP...", "GET", "/api/addons/a%2Fb/export", None),
    (lambda c: c.export_dump("db", "20261205T080912Z", io.BytesIO()), b"PGDMP...", "GET",
     "/api/addons/db/backups/20261205T080912Z/download", None),
]  # fmt: skip


@pytest.mark.parametrize(("call", "answer", "method", "path", "body"), CALLS, ids=[c[3] for c in CALLS])
def test_each_backup_method_sends_its_operation(api, call, answer, method, path, body):  # noqa: F811
    server, client = api
    server.answer = answer
    call(client)
    (seen,) = server.seen
    assert (seen["method"], seen["path"], seen["body"]) == (method, path, body)
    assert seen["auth"] == "Bearer t0ken"


def test_an_export_is_written_out_whole(api):  # noqa: F811
    server, client = api
    server.answer = bytes(range(256)) * 4096
    out = io.BytesIO()
    assert client.export_dump("db", None, out) == len(server.answer)
    assert out.getvalue() == server.answer
