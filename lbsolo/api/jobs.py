"""Jobs that make releases, as the API streams them: NDJSON lines, then the result."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from lbsolo.api.audit import note
from lbsolo.core import DeployJob


def ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def stream_job(job: DeployJob | None) -> StreamingResponse:
    """A release-making job as NDJSON: {"line": ...} while it runs, then {"result": ...}."""

    async def body() -> AsyncIterator[bytes]:
        if job is None:  # the change was stored; there is nothing running to roll out yet
            yield ndjson({"result": {"ok": True, "release": None}})
            return
        async for line in job.output.follow():
            yield ndjson({"line": line})
        if job.task is not None:
            await job.task
        note(release=job.result.get("release"))  # the audit line of the request names the release made
        yield ndjson({"result": job.result})

    return StreamingResponse(body(), media_type="application/x-ndjson")
