"""Replicas read from the Docker engine's answers: its container list (one `GET /containers/json`
per listing) and its inspection of one container (after a start)."""

from __future__ import annotations

from lbsolo.engine_docker import LOOPBACK, inspected_replica, listed_replica
from lbsolo.models import ONE_OFF


def entry(**over):
    # The shape Docker 20.10 answers with, trimmed to what lbsolo reads and a little more.
    item = {
        "Id": "9f124fa99ae60ff14404d465de61b92e83b3627a300ecb02bc260e20ee85fd19",
        "Names": ["/lbsolo-shop-web-v3-a1b2c3"],
        "Image": "lbsolo/shop:v3",
        "Created": 1795697961,
        "Ports": [{"IP": "127.0.0.1", "PrivatePort": 5000, "PublicPort": 33187, "Type": "tcp"}],
        "Labels": {
            "lbsolo.managed": "true",
            "lbsolo.instance": "abc",
            "lbsolo.app": "shop",
            "lbsolo.release": "3",
            "lbsolo.process": "web",
        },
        "State": "running",
        "Status": "Up 3 seconds",
    }
    item.update(over)
    return item


def test_a_running_web_replica():
    r = listed_replica(entry())
    assert (r.name, r.app, r.release, r.process, r.running, r.status, r.host_port) == (
        "lbsolo-shop-web-v3-a1b2c3", "shop", 3, "web", True, "running", 33187,
    )  # fmt: skip
    assert r.address == (LOOPBACK, 33187) == ("127.0.0.1", 33187)


def test_a_stopped_worker_has_no_port_and_an_unknown_release_is_none():
    labels = {**entry()["Labels"], "lbsolo.process": "worker", "lbsolo.release": "x"}
    r = listed_replica(entry(State="exited", Status="Exited (1) 2 seconds ago", Ports=[], Labels=labels))
    assert (r.running, r.status, r.host_port, r.release, r.process) == (False, "exited", None, None, "worker")
    assert r.address is None


def test_only_a_port_published_on_loopback_counts():
    ports = [{"IP": "0.0.0.0", "PrivatePort": 5000, "PublicPort": 8000, "Type": "tcp"}, {"PrivatePort": 5001}]
    assert listed_replica(entry(Ports=ports)).host_port is None


def test_an_unpublished_web_replica_is_reached_at_its_network_address_on_its_labelled_port():
    labels = {**entry()["Labels"], "lbsolo.port": "5000"}
    networks = {"lbsolo-abc-shop": {"IPAddress": "10.213.0.5"}}
    r = listed_replica(entry(Ports=[], Labels=labels, NetworkSettings={"Networks": networks}))
    assert r.address == ("10.213.0.5", 5000)
    # A stopped one has no address on its network; a published loopback port wins (publish_ports,
    # or a replica an earlier lbsolo started).
    stopped = {"lbsolo-abc-shop": {"IPAddress": ""}}
    assert listed_replica(entry(Ports=[], Labels=labels, NetworkSettings={"Networks": stopped})).address is None
    assert listed_replica(entry(Labels=labels, NetworkSettings={"Networks": networks})).address == (LOOPBACK, 33187)
    # The inspection reads the same way.
    attrs = inspection(Config={"Labels": labels}, NetworkSettings={"Ports": {"5000/tcp": None}, "Networks": networks})
    assert inspected_replica(attrs).address == ("10.213.0.5", 5000)
    # A worker has no port label: no address, whatever its network.
    assert listed_replica(entry(Ports=[], NetworkSettings={"Networks": networks})).address is None


def test_one_off_containers_are_marked_and_oldest_sorts_first():
    labels = {**entry()["Labels"], "lbsolo.process": ONE_OFF}
    assert listed_replica(entry(Labels=labels)).one_off
    older, newer = listed_replica(entry(Created=999_999_999)), listed_replica(entry(Created=1_000_000_000))
    assert older.started_at < newer.started_at


def inspection(**over):
    # `GET /containers/{id}/json` of a started web replica, trimmed to what lbsolo reads.
    attrs = {
        "Id": "9f124fa99ae60ff14404d465de61b92e83b3627a300ecb02bc260e20ee85fd19",
        "Name": "/lbsolo-shop-web-v3-a1b2c3",
        "State": {"Status": "running", "Running": True, "StartedAt": "2026-11-27T10:19:21.123456789Z"},
        "Config": {"Labels": entry()["Labels"]},
        "NetworkSettings": {
            "Ports": {"5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "33187"}], "5001/tcp": None},
        },
    }
    attrs.update(over)
    return attrs


def test_an_inspected_replica_reads_like_a_listed_one():
    r = inspected_replica(inspection())
    listed = listed_replica(entry())
    assert (r.id, r.name, r.app, r.release, r.process, r.running, r.status, r.address) == (
        listed.id, listed.name, listed.app, listed.release, listed.process, listed.running, listed.status,
        listed.address,
    )  # fmt: skip
    assert r.started_at == "2026-11-27T10:19:21.123456789Z"


def test_an_inspected_replica_reached_only_on_loopback():
    wide = {"5000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]}
    r = inspected_replica(inspection(NetworkSettings={"Ports": wide}, State={"Status": "exited"}))
    assert (r.address, r.running, r.status, r.started_at) == (None, False, "exited", "")


def test_log_frames_are_split_at_their_lengths_whatever_the_reads():
    from lbsolo.engine_docker import split_frames

    frame = lambda stream, data: bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data  # noqa: E731
    stream = frame(1, b"hello\n") + frame(2, b"wor") + frame(1, b"ld\n")
    assert split_frames(stream) == ([b"hello\n", b"wor", b"ld\n"], b"")
    for cut in range(len(stream)):  # a read may end anywhere
        first, rest = split_frames(stream[:cut])
        second, tail = split_frames(rest + stream[cut:])
        assert first + second == [b"hello\n", b"wor", b"ld\n"] and tail == b""


def test_logs_are_followed_on_the_loop_from_the_engines_unix_socket(tmp_path, monkeypatch, run):
    """A stand-in engine on a unix socket answers the logs request with framed output, cut anywhere."""
    import asyncio

    import pytest

    from lbsolo.engine_docker import DockerBackend
    from lbsolo.errors import EngineError

    frame = lambda stream, data: bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data  # noqa: E731
    body = frame(1, b"listening on :5000\nGET / 200\n") + frame(2, b"warn: no ") + frame(2, "caf\u00e9\n".encode())
    seen: list[bytes] = []

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        if b"/containers/gone/" in head:
            writer.write(b"HTTP/1.0 404 Not Found\r\n\r\n")
        else:
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n")
            for i in range(0, len(body), 5):  # the output arrives in small pieces
                writer.write(body[i : i + 5])
                await writer.drain()
        writer.close()

    async def main() -> None:
        path = str(tmp_path / "docker.sock")
        server = await asyncio.start_unix_server(engine, path)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        backend = DockerBackend("test")
        lines = [line async for line in backend.follow_logs_async("c1", since=12.5)]
        assert lines == ["listening on :5000", "GET / 200", "warn: no caf\u00e9"]
        assert seen[0].startswith(b"GET /containers/c1/logs?follow=1&stdout=1&stderr=1&since=12.500000 HTTP/1.0")
        with pytest.raises(EngineError, match="404"):
            [line async for line in backend.follow_logs_async("gone")]
        monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
        with pytest.raises(EngineError, match="unix socket"):
            [line async for line in backend.follow_logs_async("c1")]
        server.close()
        await server.wait_closed()

    run(main)


class _OneShotAPI:
    """The engine's stats endpoint as an API 1.41 engine answers one-shot: no earlier reading."""

    api_version = "1.41"

    def __init__(self, readings):
        self.readings, self.calls = list(readings), []

    def stats(self, container, stream=True, one_shot=None):
        self.calls.append((container, stream, one_shot))
        total, system = self.readings.pop(0)
        return {"cpu_stats": {"cpu_usage": {"total_usage": total}, "system_cpu_usage": system, "online_cpus": 2},
                "precpu_stats": {}, "memory_stats": {"usage": 100}}  # fmt: skip


class _Client:
    def __init__(self, api):
        self.api = api


def test_stats_take_one_reading_and_count_cpu_since_the_replicas_previous_one():
    """A two-reading stats call blocks a second in the engine; at 200 replicas every 5 s that
    kept the engine busy and every deploy waited behind it (bench/scale.py)."""
    from lbsolo.engine_docker import DockerBackend

    api = _OneShotAPI([(1_000, 10_000), (1_500, 11_000), (9, 9)])
    engine = DockerBackend("abc", client=_Client(api))  # type: ignore[arg-type]
    assert engine.stats("r1")["cpu_percent"] == 0.0  # nothing to compare with yet
    assert engine.stats("r1")["cpu_percent"] == 100.0  # 500 of 1,000 system ticks, on 2 CPUs
    assert engine.stats("r2")["cpu_percent"] == 0.0  # another replica: its own first reading
    assert api.calls == [("r1", False, True), ("r1", False, True), ("r2", False, True)]
