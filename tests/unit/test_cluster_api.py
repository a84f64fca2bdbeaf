"""The cluster routes in-process: a FastAPI app with lbsolo.api.cluster's router over the real
ClusterOps (lbsolo.core_cluster) and a hand-written fake swarm (the engine seam's Cluster). No
Docker, no sockets. Every route is classified for scoped tokens (lbsolo.api.scopes): changes and
the join command are the admin's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lbsolo.api.cluster import create_cluster_router
from lbsolo.api.scopes import refusal
from lbsolo.core_cluster import ClusterOps
from lbsolo.engine_cluster import Cluster, NodeRecord, SwarmStatus
from lbsolo.errors import LbsoloError

TOKEN = "SWMTKN-1-secret-join-token"


class FakeSwarm:
    """An engine that is in no swarm until init; then a manager with the workers `join` adds."""

    def __init__(self, state: str = "inactive", manager: bool = False) -> None:
        self.state, self.manager = state, manager
        self.inits: list[str | None] = []
        self.members: list[NodeRecord] = []
        self.replicas: dict[str, int] = {}

    def status(self) -> SwarmStatus:
        active = self.state == "active"
        return {
            "state": self.state, "manager": self.manager, "node_id": "mgr0001" if active else "",
            "node_addr": "10.9.0.1" if active else "", "cluster_id": "c1" if self.manager else "",
            "managers": ["10.9.0.1:2377"] if active else [], "nodes": len(self.members) if self.manager else 0,
        }  # fmt: skip

    def init(self, advertise_addr: str | None) -> SwarmStatus:
        self.inits.append(advertise_addr)
        self.state, self.manager = "active", True
        self.members = [self._node("mgr0001", "mgr", "manager")]
        return self.status()

    def join(self, id_: str, name: str) -> None:
        self.members.append(self._node(id_, name, "worker"))

    @staticmethod
    def _node(id_: str, name: str, role: str) -> NodeRecord:
        return {
            "id": id_, "name": name, "address": "10.9.0.1", "role": role, "leader": role == "manager",
            "status": "ready", "availability": "active", "cpus": 2.0, "memory": 2048, "engine": "20.10", "labels": {},
        }  # fmt: skip

    def join_token(self) -> tuple[str, str]:
        return TOKEN, "10.9.0.1:2377"

    def nodes(self) -> list[NodeRecord]:
        return [dict(n) for n in self.members]  # type: ignore[misc]

    def set_availability(self, node_id: str, availability: str) -> NodeRecord:
        (n,) = [n for n in self.members if n["id"] == node_id]
        n["availability"] = availability
        return dict(n)  # type: ignore[return-value]

    def replicas_by_node(self) -> dict[str, int]:
        return dict(self.replicas)


class Holder:
    def __init__(self, cluster: ClusterOps | None) -> None:
        self.cluster = cluster


def api(swarm: FakeSwarm | None, backend: str = "docker", **settings: str) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(LbsoloError)
    async def _lbsolo_error(request: Request, exc: LbsoloError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status)

    ops = ClusterOps(backend, lambda: swarm, **settings) if swarm is not None else None  # type: ignore[arg-type,return-value]
    app.include_router(create_cluster_router(Holder(ops), lambda: None))
    return app


def call(app: FastAPI, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.request(method, path, **kw)

    return asyncio.run(go())


def test_the_fake_is_a_cluster():
    assert isinstance(FakeSwarm(), Cluster)


def test_init_makes_a_swarm_once_then_changes_nothing():
    swarm = FakeSwarm()
    app = api(swarm)
    first = call(app, "POST", "/api/cluster/init", json={"advertise_addr": "10.9.0.1"})
    assert first.status_code == 200, first.text
    assert first.json()["created"] is True and first.json()["address"] == "10.9.0.1"
    again = call(app, "POST", "/api/cluster/init", json={})
    assert again.status_code == 200 and again.json()["created"] is False
    assert swarm.inits == ["10.9.0.1"]  # the engine was asked once


def test_bad_input_and_wrong_states_say_why_and_change_nothing():
    swarm = FakeSwarm()
    app = api(swarm)
    before = call(app, "GET", "/api/cluster/join-command")
    assert before.status_code == 409
    assert before.json()["error"]["message"] == "this engine is not in a swarm yet: run `lbsolo cluster:init` first"
    assert call(app, "GET", "/api/nodes").status_code == 409
    bad = call(app, "POST", "/api/cluster/init", json={"advertise_addr": "127.0.0.1"})
    assert bad.status_code == 422 and "cannot reach" in bad.json()["error"]["message"]
    assert swarm.inits == []
    worker = call(api(FakeSwarm("active", manager=False)), "POST", "/api/cluster/init", json={})
    assert worker.status_code == 409 and "worker of another swarm, managed at 10.9.0.1:2377" in worker.text
    assert call(api(None), "GET", "/api/cluster").status_code == 409


def test_nodes_drain_and_activate():
    swarm = FakeSwarm()
    swarm.init("10.9.0.1")
    swarm.join("wrk0002", "wrk")
    swarm.replicas = {"mgr0001": 2}
    app = api(swarm, backend="swarm")
    status = call(app, "GET", "/api/cluster").json()
    assert status["backend"] == "swarm" and status["not_yet"][0].endswith("is not available on the swarm backend yet")
    rows = call(app, "GET", "/api/nodes").json()
    assert [(n["name"], n["role"], n["status"], n["availability"], n["replicas"], n["self"]) for n in rows] == [
        ("mgr", "manager", "ready", "active", 2, True), ("wrk", "worker", "ready", "active", 0, False),
    ]  # fmt: skip
    unknown = call(app, "POST", "/api/nodes/nope/drain")
    assert unknown.status_code == 404 and "no node 'nope'" in unknown.text
    assert call(app, "POST", "/api/nodes/wrk/drain").json()["availability"] == "drain"
    last = call(app, "POST", "/api/nodes/mgr/drain")  # the worker is drained: nothing would be left
    assert last.status_code == 409 and "would leave no ready, active node" in last.text
    assert [n["availability"] for n in swarm.members] == ["active", "drain"]
    assert call(app, "POST", "/api/nodes/wrk0002/activate").json()["availability"] == "active"
    assert call(app, "POST", "/api/nodes/mgr/drain").json()["availability"] == "drain"  # the worker takes over


def test_the_join_command_holds_the_token_and_nothing_logs_it(caplog):
    swarm = FakeSwarm()
    swarm.init(None)
    with caplog.at_level(logging.DEBUG):
        join = call(api(swarm), "GET", "/api/cluster/join-command").json()
    assert join == {
        "command": f"docker swarm join --token {TOKEN} 10.9.0.1:2377", "address": "10.9.0.1:2377", "firewall": "",
        "registry": None, "trust": None,  # the docker backend runs no registry
    }  # fmt: skip
    assert TOKEN not in caplog.text
    # with the daemon's instance and port range: the firewall step every node then runs
    join = call(api(swarm, instance="abc", swarm_ports="31000-31099"), "GET", "/api/cluster/join-command").json()
    assert join["firewall"] == "lbsolo node:firewall --instance abc --manager 10.9.0.1 --ports 31000-31099"


def test_every_cluster_route_is_the_admins_to_change_and_the_join_command_the_admins_to_read():
    app = api(FakeSwarm())
    routes = [(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops]
    assert len(routes) == 6
    for method, path in routes:
        params = {"node": "n1"} if "{node}" in path else {}
        assert refusal("admin", (), method, path, params) is None
        for role in ("read", "deploy"):
            why = refusal(role, (), method, path, params)
            if method == "GET" and path != "/api/cluster/join-command":
                assert why is None, (role, path)
            else:
                assert why is not None and "admin" in why, (role, method, path)
        assert refusal("admin", ("hello",), method, path, params) is not None  # not an app's route


@pytest.mark.parametrize("path", ["/api/nodes/..%2Fx/drain", "/api/nodes/a%20b/activate"])
def test_bad_node_names_are_refused(path):
    swarm = FakeSwarm()
    swarm.init(None)
    answer = call(api(swarm), "POST", path)
    assert answer.status_code in (404, 422)
    assert [n["availability"] for n in swarm.members] == ["active"]
