"""The UI's Nodes page in-process (lbsolo.api.web_nodes), over the real ClusterOps and the fake
swarm of test_cluster_api: what it shows in each swarm state, its forms (CSRF-checked, back to
the page with what they did or why not), and the join command shown only in its form's answer."""

from __future__ import annotations

import re

import pytest

from lbsolo.core_cluster import ClusterOps
from tests.unit.test_cluster_api import TOKEN as JOIN_TOKEN
from tests.unit.test_cluster_api import FakeSwarm
from tests.unit.test_web import Client, FakePlatform, client, login

__all__ = ["client"]  # the UI's router over `platform` below (a fixture of test_web)


@pytest.fixture
def swarm() -> FakeSwarm:
    return FakeSwarm()


@pytest.fixture
def platform(swarm) -> FakePlatform:
    p = FakePlatform()
    p.cluster = ClusterOps("swarm", lambda: swarm, instance="abc", swarm_ports="30000-30999")  # type: ignore[attr-defined]
    return p


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def test_the_nodes_page_needs_a_session_and_is_in_the_nav(client: Client):
    assert client.get("/ui/nodes").headers["location"].startswith("/ui/login?next=/ui/nodes")
    login(client)
    assert 'href="/ui/nodes"' in client.get("/ui/").text


def test_init_then_nodes_drain_activate_and_the_join_command(client: Client, swarm: FakeSwarm):
    login(client)
    page = client.get("/ui/nodes").text
    assert 'id="init-form"' in page and "swarm inactive" in page
    assert "is not available on the swarm backend yet" in page  # what the backend cannot do yet
    assert client.post("/ui/nodes/init", data={"advertise_addr": "10.9.0.1"}).status_code == 403  # no CSRF token
    assert swarm.inits == []
    done = client.post("/ui/nodes/init", data={"advertise_addr": "10.9.0.1", "csrf": csrf_of(page)})
    assert done.status_code == 303 and done.headers["location"] == "/ui/nodes"
    page = client.get("/ui/nodes").text
    assert "initialised a swarm, this engine its manager at 10.9.0.1" in page and swarm.inits == ["10.9.0.1"]
    swarm.join("wrk0002", "wrk")
    page = client.get("/ui/nodes").text
    assert 'data-node="mgr"' in page and 'data-node="wrk"' in page and "manager (leader)" in page
    assert JOIN_TOKEN not in page
    csrf = csrf_of(page)

    client.post("/ui/nodes/wrk0002/drain", data={"csrf": csrf})
    page = client.get("/ui/nodes").text
    assert "drained wrk" in page and ">Activate</button>" in page
    client.post("/ui/nodes/mgr0001/drain", data={"csrf": csrf})
    page = client.get("/ui/nodes").text
    assert "would leave no ready, active node" in page  # in red, nothing changed
    assert [n["availability"] for n in swarm.members] == ["active", "drain"]
    client.post("/ui/nodes/wrk0002/activate", data={"csrf": csrf})
    assert "activated wrk" in client.get("/ui/nodes").text

    shown = client.post("/ui/nodes/join-command", data={"csrf": csrf})
    assert shown.status_code == 200 and f"docker swarm join --token {JOIN_TOKEN} 10.9.0.1:2377" in shown.text
    assert "lbsolo node:firewall --instance abc --manager 10.9.0.1 --ports 30000-30999" in shown.text
    assert JOIN_TOKEN not in client.get("/ui/nodes").text  # not kept in a flash


def test_a_worker_engine_is_shown_as_why(client: Client, swarm: FakeSwarm):
    swarm.state = "active"  # a worker: no cluster verb can run here
    login(client)
    page = client.get("/ui/nodes").text
    assert "this engine&#39;s swarm is active (not a manager)" in page and "data-node" not in page
