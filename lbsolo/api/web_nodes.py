"""The web UI's Nodes page: the swarm this daemon's engine is in, its nodes (name, address, role,
status, availability, CPUs, memory, this lbsolo's replicas), Drain and Activate per node, Initialise
when the engine is in no swarm, and the join command on request. Each form calls the use case its
REST route calls (lbsolo.api.cluster) and comes back to the page with what it did, or why not (in
red; nothing changed). The join command holds a secret: it is shown only in the answer to its
(CSRF-checked) form, never put in a flash, a redirect or a log. It must not import jinja2, the
engine or the state store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lbsolo.cluster_plan import cpus_label, memory_label
from lbsolo.core import Platform
from lbsolo.errors import LbsoloError

if TYPE_CHECKING:
    from lbsolo.api.web_addons import Pages

NODES = "/ui/nodes"


def create_web_nodes_router(platform: Platform, pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    async def view(join: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the page shows; an engine that cannot say (unreachable, a worker) is shown as why."""
        ops = platform.cluster
        if ops is None:
            return {"cluster": None, "nodes": [], "problem": "this daemon runs without an engine cluster", "join": None}
        try:
            cluster = await ops.status()
        except LbsoloError as e:
            return {"cluster": None, "nodes": [], "problem": e.message, "join": None}
        nodes: list[dict[str, Any]] = []
        problem = None
        if cluster["state"] == "active" and cluster["manager"]:
            try:
                nodes = [
                    {**n, "cpus_label": cpus_label(n["cpus"]), "memory_label": memory_label(n["memory"])}
                    for n in await ops.nodes()
                ]
            except LbsoloError as e:
                problem = e.message
        elif cluster["state"] != "inactive":
            problem = f"this engine's swarm is {cluster['state']}" + ("" if cluster["manager"] else " (not a manager)")
        return {"cluster": cluster, "nodes": nodes, "problem": problem, "join": join}

    @router.get(NODES)
    async def nodes_page(request: Request) -> Response:
        session = pages.current(request)
        if session is None:
            return pages.to_login(request)
        return pages.page(request, "nodes.html", session, **await view())

    async def change(request: Request, act: Any) -> Response:
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        try:
            message = await act(form)
        except LbsoloError as e:
            return pages.back_to(session, NODES, "error", e.message)
        return pages.back_to(session, NODES, "ok", message)

    def ops_of() -> Any:
        if platform.cluster is None:
            raise LbsoloError("this daemon runs without an engine cluster")
        return platform.cluster

    @router.post(f"{NODES}/init")
    async def init(request: Request) -> Response:
        async def act(form: dict[str, str]) -> str:
            done = await ops_of().init(form.get("advertise_addr", "").strip() or None)
            if not done["created"]:
                return "this engine manages a swarm already: nothing changed"
            return f"initialised a swarm, this engine its manager at {done['address']}"

        return await change(request, act)

    @router.post(NODES + "/{node}/drain")
    async def drain(request: Request, node: str) -> Response:
        async def act(_form: dict[str, str]) -> str:
            row = await ops_of().drain(node)
            return f"drained {row['name']}: its replicas move to the other nodes"

        return await change(request, act)

    @router.post(NODES + "/{node}/activate")
    async def activate(request: Request, node: str) -> Response:
        async def act(_form: dict[str, str]) -> str:
            row = await ops_of().activate(node)
            return f"activated {row['name']}: it takes replicas again"

        return await change(request, act)

    @router.post(f"{NODES}/join-command")
    async def join_command(request: Request) -> Response:
        checked = await pages.checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, _form = checked
        try:
            join = await ops_of().join_command()
        except LbsoloError as e:
            return pages.back_to(session, NODES, "error", e.message)
        return pages.page(request, "nodes.html", session, **await view(join))

    return router

