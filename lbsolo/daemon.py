"""`lbsolo up`: one process, one event loop, running API, reconcile loop, builder, proxy and DNS.

Startup: prepare the home directory and token, check the engine, open state, start the proxy
and DNS, adopt running containers (one reconcile pass), then serve the API and start the
supervised background tasks. Shutdown on SIGINT/SIGTERM: stop accepting, let in-flight work
finish within settings.shutdown_timeout, cancel the rest. App containers keep running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn

from lbsolo.api.rest import create_api
from lbsolo.api.tokens import TokenStore
from lbsolo.build import Builder
from lbsolo.config import Settings, networks
from lbsolo.core import Platform
from lbsolo.core_certs import Certificates
from lbsolo.core_context import CoreContext
from lbsolo.daemon_backend import backend_notes, open_backend
from lbsolo.daemon_handover import Listeners, bind_dns, bind_tcp, inherited, signal_ready, start_successor
from lbsolo.daemon_home import ensure_home, instance_id, spool_dir, write_private
from lbsolo.daemon_ingress import ProxyIngress, own_route
from lbsolo.dns import DNSServer, ForwardConfig, RateLimit, Zone
from lbsolo.engine import free_subnet
from lbsolo.engine_docker_archive import DockerArchive
from lbsolo.engine_docker_services import DockerServices
from lbsolo.errors import InvalidInput
from lbsolo.events import EventBus
from lbsolo.notify import WebhookNotifier
from lbsolo.proxy import ProxyServer, Target
from lbsolo.run_logs import AccessLog, LogCollector, LogStore
from lbsolo.run_stats import StatsSampler
from lbsolo.state import State

log = logging.getLogger("lbsolo.daemon")

BLOCKING_THREADS = 64  # the loop's executor: engine calls, state writes, one-off containers


class _APIServer(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        # The daemon owns SIGINT/SIGTERM and shuts every part down in order.
        return contextlib.nullcontext()


def _listeners(s: Settings, https: bool) -> Listeners:
    """The listening sockets: inherited from the daemon this one takes over from, or bound now."""
    given = inherited()
    if given:
        return Listeners(
            proxy=given["proxy"],
            dns_udp=given["dns_udp"],
            dns_tcp=given["dns_tcp"],
            api=given["api"],
            proxy_tls=given.get("proxy_tls"),
            api_unix=given.get("api_unix"),
            inherited=True,
        )
    proxy = bind_tcp(s.proxy_host, s.proxy_port)
    proxy_tls = bind_tcp(s.proxy_host, s.proxy_https_port) if https and s.proxy_https_port else None
    dns_udp, dns_tcp = bind_dns(s.dns_host, s.dns_port)
    api = bind_tcp(s.api_host, s.api_port, backlog=1024)
    return Listeners(proxy, dns_udp, dns_tcp, api, proxy_tls, _bind_unix(s.socket_path))


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _bind_unix(path: Path) -> socket.socket | None:
    """The API for the local CLI on a unix socket only its owner can open (0600); None if impossible."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as e:  # e.g. a path longer than the 108 bytes unix sockets allow
        sock.close()
        log.warning("no API unix socket at %s (%s); the CLI will use TCP", path, e)
        return None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _start(background: dict[str, Callable[[], Awaitable[None]]]) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(_supervise(name, f), name=name) for name, f in background.items()]


async def _supervise(name: str, factory: Callable[[], Awaitable[None]]) -> None:
    """Run a long-lived task; log and restart it if it dies, with a short pause."""
    while True:
        try:
            await factory()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting it in 1s", name)
            await asyncio.sleep(1.0)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()
        self._handover = asyncio.Event()
        self._handed_over = False

    def request_stop(self) -> None:
        self._stop.set()

    def request_handover(self) -> None:
        """SIGUSR2 (lbsolo restart, systemctl reload): start the next daemon on our sockets."""
        self._handover.set()

    async def run(self, on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
        s = self.settings
        # Engine calls block a thread each, a one-off container (a cron run) for its whole life:
        # asyncio's default of cpus + 4 threads made fifty jobs due at once wait their turn. Threads
        # are made only when needed.
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="lbsolo")
        )
        token = await asyncio.to_thread(ensure_home, s)
        try:
            free_subnet(s.network_pool, s.network_prefix, [])
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        engine, cluster = open_backend(s, instance_id(s))  # LBSOLO_BACKEND: docker or swarm
        docker_version = await asyncio.to_thread(engine.ping)
        notes, registry = await backend_notes(cluster, s)  # swarm: what it lacks, where images go (or: cannot start)
        state = await asyncio.to_thread(State, s.state_path)

        # access_log_max_bytes 0: no access log at all (the proxy then formats no lines either).
        access = (
            AccessLog(s.logs_dir / "access.log", max_bytes=s.access_log_max_bytes, keep=s.access_log_keep)
            if s.access_log_max_bytes > 0
            else None
        )
        tls = None
        tls_knows: Callable[[str], bool] | None = None
        install: Callable[[str, bytes, bytes], None] | None = None
        if s.proxy_https_port:
            from lbsolo.proxy_tls import CertStore, LocalCA, LocalCASource, PushedSource

            ca = await asyncio.to_thread(LocalCA(s.tls_dir, domain=s.domain).load_or_create)
            if problem := await asyncio.to_thread(ca.problem):
                log.warning("%s", problem)
            # ACME's certificates are pushed in (core_certs); user certificates keep priority in the store.
            pushed = PushedSource()
            # A routed name no certificate covers yet gets the domain's meanwhile (proxy: made below).
            store = CertStore(
                s.domain, ca, s.tls_dir / "certs", sources=[LocalCASource(ca, s.domain)],
                routed=lambda n: proxy.serves_host(n), obtained=pushed,
            )  # fmt: skip
            # Mints the certificate of the domain and *.<domain> once, before any handshake.
            tls = await asyncio.to_thread(store.server_context)
            tls_knows = store.knows

            def install(domain: str, chain: bytes, key: bytes) -> None:
                pushed.put(domain, chain, key)
                store.refresh(domain)

        # A request held for a sleeping app puts its name here; the core's Sleepers wake it.
        wakes: asyncio.Queue[str] = asyncio.Queue()
        proxy = ProxyServer(
            host=s.proxy_host,
            port=s.proxy_port,
            domain=s.domain,
            access_log=access.write if access is not None else None,
            https_port=s.proxy_https_port or None,
            tls=tls,
            tls_knows=tls_knows,
            trusted_proxies=networks(s.trusted_proxies, "trusted_proxies"),
            max_connections=s.proxy_max_connections,
            max_connections_per_client=s.proxy_max_connections_per_client,
            buffer_memory=s.proxy_buffer_memory,
            buffer_max=s.proxy_buffer_max,
            buffer_disk=s.proxy_buffer_disk,
            spool_dir=await asyncio.to_thread(spool_dir, s.tmp_dir),
            body_min_rate=s.proxy_body_min_rate,
            body_grace=s.proxy_body_grace,
            tunnel_idle_timeout=s.proxy_tunnel_idle_timeout,
            acme_challenges=s.acme_on,
            wake=wakes.put_nowait,
            wake_timeout=s.deploy_timeout + 10,  # a start and its health checks, with room
            wake_page_after=s.wake_page_after,
        )
        zone = Zone(domain=s.domain, ipv4=s.dns_ipv4, ipv6=s.dns_ipv6, strict=s.dns_strict, ttl=s.dns_ttl)
        forward = None
        if s.dns_forward:
            upstreams = tuple(u.strip() for u in s.dns_upstreams.split(",") if u.strip())
            allow = networks(s.dns_allow, "dns_allow")
            forward = ForwardConfig(upstreams=upstreams, **({"allow": allow} if allow else {}))
        limit = RateLimit(qps=s.dns_rate_qps, burst=s.dns_rate_qps * 2) if s.dns_rate_qps > 0 else None
        dns = DNSServer(
            host=s.dns_host,
            port=s.dns_port,
            zone=zone,
            forward=forward,
            rate_limit=limit,
            tcp_max_per_client=s.dns_tcp_max_per_client,
            tcp_max_lifetime=s.dns_tcp_max_lifetime,
        )

        listeners = await asyncio.to_thread(_listeners, s, tls is not None)
        if listeners.inherited and os.environ.get("LBSOLO_FAIL_TAKEOVER"):
            # Fault injection for tests: a successor that dies before it serves (the old one goes on).
            raise SystemExit("LBSOLO_FAIL_TAKEOVER: this successor gives up before it serves")
        api_sock = listeners.api
        api_url = f"http://{s.api_host}:{api_sock.getsockname()[1]}"
        loopback = "127.0.0.1" if s.api_host in ("0.0.0.0", "", "127.0.0.1") else s.api_host
        ingress = ProxyIngress(proxy, dns, own=own_route(s, Target(loopback, api_sock.getsockname()[1])))
        bus = EventBus()
        logs = LogStore(s.logs_dir)
        # Replicas' output read on the loop: no thread per followed replica, whatever the number of apps.
        collector = LogCollector(logs, engine.follow_logs, follow_async=engine.follow_logs_async)
        ctx = CoreContext(s, state, engine, ingress, bus, logs, collector)
        builder = Builder(
            engine,
            memory=s.build_memory,
            timeout=s.build_timeout,
            builds=state.list_builds,
            forget_builds=state.delete_builds,
            log_dir=s.logs_dir / "builds",
            keep_builds=s.keep_builds,
            on_change=ctx.record_build,
        )
        certs = Certificates(s, state, bus, proxy, install) if s.acme_on else None
        if certs is not None:
            bus.add_listener(certs.on_event)  # a domain added: its certificate is asked in the background
        platform = Platform.over(ctx, builder, DockerServices(engine), certs, wakes, DockerArchive(engine), cluster)
        notifier = WebhookNotifier(state, bus, allow_private=s.webhook_allow_private)
        sampler = StatsSampler(engine, interval=s.stats_interval, requests=proxy.metrics)
        bus.add_listener(sampler.on_event)
        bus.add_listener(platform.cron.on_event)
        bus.add_listener(platform.drains.on_event)
        bus.add_listener(platform.alerts.on_event)
        bus.add_listener(platform.routing.on_event)  # a first certificate turns an app's HTTPS redirect on
        tokens = await asyncio.to_thread(TokenStore, state)
        ingress.publish({})
        unix_sock = listeners.api_unix
        if not _is_loopback(s.api_host):
            log.warning(
                "THE API LISTENS ON %s WITHOUT TLS: the token crosses the network in clear text. "
                "Bind it to 127.0.0.1 and reach it through the proxy or an SSH tunnel.",
                s.api_host,
            )
        server = _APIServer(
            uvicorn.Config(
                create_api(platform, token, api_url, bus=bus, notifier=notifier, sampler=sampler, tokens=tokens),
                lifespan="off",
                log_level="warning",
                access_log=False,
            )
        )
        tasks: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGUSR2, self.request_handover)
        try:
            if not listeners.inherited:
                await proxy.start(listeners.proxy, listeners.proxy_tls)
                await dns.start(udp_sock=listeners.dns_udp, tcp_sock=listeners.dns_tcp)
            await notifier.start()
            await platform.recover()
            if platform.backups is not None:
                await platform.backups.resume()  # first: a Redis restore's helper goes before its add-on restarts
            if platform.addons is not None:
                await platform.addons.resume()
            await platform.load_static_routes()
            actions = await platform.reconcile()  # adopt what runs; start what should
            if listeners.inherited:
                # Taking over: the old daemon serves until this one knows every route, then both accept.
                await proxy.start(listeners.proxy, listeners.proxy_tls)
                await dns.start(udp_sock=listeners.dns_udp, tcp_sock=listeners.dns_tcp)
            tasks.append(
                asyncio.create_task(server.serve(sockets=[api_sock, *([unix_sock] if unix_sock else [])]), name="api")
            )
            while not server.started:
                if tasks[0].done():
                    await tasks[0]
                await asyncio.sleep(0.01)
            if certs is not None:
                await certs.load()  # certificates issued before: served from the first handshake
            # The tasks that change the state (and what feeds them): stopped while handing over.
            background: dict[str, Callable[[], Awaitable[None]]] = {
                "builder": builder.run,
                "reconcile": platform.reconcile_forever,
                "events": platform.watch_events,
                "logs": platform.logs.flush_forever,
                "stats": sampler.run,
                "cron": platform.cron.run_forever,
                "sleep": platform.sleepers.run_forever,
                "drains": platform.drains.run_forever,
                "alerts": platform.alerts.run_forever,
                **registry.background,  # lbsolo's own registry on the swarm backend (stopped when cancelled)
            }
            if access is not None:
                background["access-log"] = access.flush_forever
            if certs is not None:
                background["acme"] = certs.run_forever
            if platform.backups is not None:
                background["backups"] = platform.backups.schedules.run_forever
            if platform.platform_backups is not None:
                background["platform-backups"] = platform.platform_backups.run_forever
            if platform.addons is not None:
                background["addons"] = platform.addons.heal_forever  # a stopped add-on started again
            tasks.extend(_start(background))
            api_port = api_sock.getsockname()[1]
            info = {
                "api": f"http://{s.api_host}:{api_port}",
                "proxy": f"http://{s.proxy_host}:{proxy.port}"
                + (f", https://{s.proxy_host}:{proxy.https_port}" if proxy.https_port else ""),
                "dns": f"{s.dns_host}:{dns.port} (udp+tcp)",
                "domain": s.domain,
                "home": str(s.home),
                "docker": docker_version,
                "backend": cluster.backend,
                "backend_notes": notes,
                "apps": len(await asyncio.to_thread(state.list_apps)),
                "replicas": platform.serving_replicas(),
                "actions": len(actions),
                "pid": os.getpid(),
            }
            runtime = {
                "api_url": info["api"],
                "socket": str(s.socket_path) if unix_sock else "",
                "proxy_port": proxy.port,
                "dns_port": dns.port,
                "pid": os.getpid(),
            }
            await asyncio.to_thread(write_private, s.runtime_path, json.dumps(runtime))
            # What is alive now (modules, the API's routes, the templates) lives as long as the daemon:
            # kept out of the collector's full passes, which would otherwise stall the proxy for
            # milliseconds now and then.
            gc.freeze()
            if on_ready:
                on_ready(info)
            signal_ready()  # to the daemon handing over to us, if any, and to systemd
            while not self._stop.is_set():
                handover = asyncio.create_task(self._handover.wait())
                stop = asyncio.create_task(self._stop.wait())
                await asyncio.wait([handover, stop], return_when=asyncio.FIRST_COMPLETED)
                handover.cancel()
                stop.cancel()
                if self._handover.is_set() and not self._stop.is_set():
                    self._handover.clear()
                    tasks[1:] = await self._hand_over(platform, listeners, tasks[1:], background)
        finally:
            await self._shutdown(server, proxy, dns, platform, tasks)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(notifier.aclose(), 3)
            api_sock.close()
            if unix_sock is not None:
                unix_sock.close()
                if not self._handed_over:  # the next daemon serves on it now
                    with contextlib.suppress(OSError):
                        s.socket_path.unlink()
            await asyncio.to_thread(state.close)
            engine.close()
            if not self._handed_over:
                with contextlib.suppress(OSError):
                    s.runtime_path.unlink()

    async def _hand_over(
        self,
        platform: Platform,
        listeners: Listeners,
        tasks: list[asyncio.Task[None]],
        background: dict[str, Callable[[], Awaitable[None]]],
    ) -> list[asyncio.Task[None]]:
        """Stop writing the state, start the next daemon on our sockets, and stop once it serves.
        If it does not come up, take the tasks up again and go on: nothing was closed."""
        s = self.settings
        platform.ctx.pause_note = "lbsolo is restarting: try again in a few seconds"
        deadline = asyncio.get_running_loop().time() + s.shutdown_timeout
        while platform.jobs and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # a deploy, backup or upgrade under way ends first
        if platform.jobs:
            log.warning("not handing over: %d jobs still running after %.0fs", len(platform.jobs), s.shutdown_timeout)
            platform.ctx.pause_note = None
            return tasks
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=5)
        with contextlib.suppress(Exception):
            await platform.logs.flush()
        successor = await asyncio.to_thread(start_successor, listeners, s.home)
        pid = await asyncio.to_thread(successor.wait_ready, s.handover_timeout)
        if pid is None:
            await asyncio.to_thread(successor.stop)
            log.error("the new daemon did not become ready in %.0fs: this one goes on", s.handover_timeout)
            platform.ctx.pause_note = None
            return _start(background)
        log.info("the new daemon (pid %d) serves: this one finishes its requests and exits", pid)
        self._handed_over = True
        self._stop.set()
        return []

    async def _shutdown(
        self,
        server: uvicorn.Server,
        proxy: ProxyServer,
        dns: DNSServer,
        platform: Platform,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        timeout = self.settings.shutdown_timeout
        log.info("shutting down (at most %.0fs)", timeout)
        server.should_exit = True
        grace = 1.0 if self._handed_over else 0.0
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proxy.stop(timeout=timeout / 2, handing_over=grace), timeout / 2 + 1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(dns.stop(), 2)
        pending = [t for t in (*tasks, *platform.jobs) if not t.done()]
        api = [t for t in tasks if t.get_name() == "api"]
        if api:
            await asyncio.wait(api, timeout=timeout / 2)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
