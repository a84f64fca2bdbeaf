"""One Settings object holding every knob of lbsolo.

Precedence: explicit overrides (CLI flags) > environment variables `LBSOLO_<FIELD>` > defaults.
Pure data: reading the environment is the only I/O here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lbsolo.errors import InvalidInput


def networks(value: str, setting: str) -> tuple[str, ...]:
    """A comma-separated list of addresses or CIDRs, checked; a bad entry names the setting it is in."""
    out = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise InvalidInput(f"LBSOLO_{setting.upper()}: {item!r} is not an IP address or network") from None
    return tuple(out)


ACME_DIRECTORIES = {
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}


def _default_home() -> Path:
    return Path(os.environ.get("LBSOLO_HOME") or Path.home() / ".lbsolo")


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=_default_home)
    domain: str = "lbsolo.localhost"
    api_host: str = "127.0.0.1"
    api_port: int = 7780
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 8080
    # HTTPS listener of the proxy (0: off). Certificates for the lbsolo domain come from a local
    # CA made on first use under $LBSOLO_HOME/tls (`lbsolo tls:trust` says how to trust it).
    proxy_https_port: int = 0
    # The proxy's edge (see the README's Security section). Peers (CIDRs or addresses, comma-separated)
    # whose X-Forwarded-For/-Proto, Forwarded and X-Real-IP are believed; from anyone else they are replaced.
    trusted_proxies: str = ""
    # Open client connections in all and per client address; beyond them a new one gets 503 and is closed.
    proxy_max_connections: int = 10000
    proxy_max_connections_per_client: int = 256
    # Request bodies are read whole before an upstream is chosen (per app: `apps:proxy --request-buffering`):
    # up to this much in memory per request, the rest in a temp file under $LBSOLO_HOME/tmp.
    proxy_buffer_memory: int = 64 * 1024
    # A buffered body larger than this gets 413 (apps taking larger uploads turn buffering off).
    proxy_buffer_max: int = 1024 * 1024 * 1024
    # All held bodies' temp files together; beyond it a new buffered body gets 503 (retry later).
    proxy_buffer_disk: int = 4 * 1024 * 1024 * 1024
    # A body must arrive at this average rate (bytes/s) after a grace of proxy_body_grace seconds.
    proxy_body_min_rate: int = 1024
    proxy_body_grace: float = 10.0
    # A WebSocket (or other upgraded) tunnel with no bytes either way for this long is closed.
    proxy_tunnel_idle_timeout: float = 300.0
    # ACME: certificates from a CA (Let's Encrypt by default) for the apps' custom domains, HTTP-01
    # and TLS-ALPN-01 answered by the proxy. Off without a contact email (`lbsolo doctor` says so). The directory is a
    # URL, or "production" / "staging" (Let's Encrypt's). A private CA's HTTPS endpoint (Pebble in the
    # tests) is checked against acme_ca_bundle (a PEM file; empty: the system's CAs).
    acme_email: str = ""
    acme_directory: str = "production"
    # Where orders go while a domain's authorizations fail (until one passes there): a URL or "staging".
    acme_staging_directory: str = "staging"
    acme_ca_bundle: str = ""
    # The DNS server (host[:port]) the preflight asks whether a name points here; empty: this machine's.
    acme_resolver: str = ""
    # The port the CA connects to for HTTP-01 (80 for every public CA): the preflight's self-check goes there.
    acme_http_port: int = 80
    # The port the CA connects to for TLS-ALPN-01 (443 for every public CA): the HTTPS listener must get it.
    acme_tls_port: int = 443
    # Orders sent to the CA per domain per hour, well under the CA's failed-authorization limit.
    acme_attempts_per_hour: int = 3
    dns_host: str = "127.0.0.1"
    dns_port: int = 5354
    dns_strict: bool = False
    dns_ttl: int = 5
    # Forwarding of names outside lbsolo's zones: off by default, and then only for `dns_allow`.
    dns_forward: bool = False
    dns_upstreams: str = ""  # comma-separated host[:port]; empty: /etc/resolv.conf
    dns_allow: str = ""  # comma-separated CIDRs; empty: loopback only
    dns_rate_qps: float = 2000.0  # per client (loopback exempt); 0 turns the limit off
    # TCP: concurrent connections one client address may hold, and seconds one stays open
    # (past it, closed after the answer in flight). 0 turns either off.
    dns_tcp_max_per_client: int = 16
    dns_tcp_max_lifetime: float = 120.0
    # Address(es) the DNS answers with: where the proxy can be reached. Empty = derived.
    public_ipv4: str = ""
    public_ipv6: str = ""
    # Each app (with its add-ons) gets a network of its own, a subnet of this size carved from
    # this pool (Docker's default pools run out after about 30 networks). Pick a range your
    # server's own networks don't use.
    network_pool: str = "10.213.0.0/16"
    network_prefix: int = 25
    # Reach replicas on a port published on 127.0.0.1 (through Docker's userland proxy) instead of at
    # their address on their network: only for a host that cannot route to Docker's bridges.
    publish_ports: bool = False
    # The version an add-on of each kind gets when `addons:create` names none (then pinned).
    addon_postgres_version: str = "17"
    addon_redis_version: str = "7"
    addon_mariadb_version: str = "10.11"
    # Seconds a new add-on may take to accept connections before its creation is undone.
    addon_ready_timeout: float = 120.0
    # Where containers run: "docker" (this machine's engine) or "swarm" (a Docker Swarm this
    # machine's engine manages; `lbsolo cluster:init` makes one). See lbsolo/cluster_plan.py.
    backend: str = "docker"
    # Where the swarm backend pushes release images, for every node to pull by digest: a
    # registry of your own (host:port or host:port/prefix; each node's engine must trust it), or
    # empty: lbsolo runs Debian's `docker-registry` on the manager's advertise address, port
    # registry_port, over TLS from a CA of its own ($LBSOLO_HOME/registry).
    registry: str = ""
    registry_port: int = 5443
    # Swarm backend: the host ports replicas publish on (host mode), one per replica; on each node
    # only the manager may reach them (`lbsolo node:firewall`, printed by `cluster:join-command`).
    swarm_ports: str = "30000-30999"
    # PORT given to web processes inside their container.
    container_port: int = 5000
    reconcile_interval: float = 5.0
    # Seconds between two rounds of replicas' CPU/memory/network numbers (the graphs' resolution).
    stats_interval: float = 5.0
    # Scheduled jobs (cron): schedules read in this time zone (an IANA name); a run still going
    # after cron_timeout seconds is killed; a run missed while the daemon was down runs once on
    # start if at most cron_grace seconds late (older ones are only reported); the scheduler
    # looks at the schedules at least every cron_poll seconds (and at each due time).
    cron_tz: str = "UTC"
    cron_timeout: float = 3600.0
    cron_grace: float = 3600.0
    cron_poll: float = 30.0
    # Tests only: seconds added to the scheduler's clock, so that a test reaches a due time at once.
    cron_clock_offset: float = 0.0
    # Log drains (drains:add): each drain buffers up to drains_buffer_lines messages and
    # drains_buffer_bytes bytes in memory, and past half of that spills its oldest to
    # $LBSOLO_HOME/drains/<id>/ up to drains_spill_bytes (0: no spill); past both the oldest are
    # dropped and counted. A send that takes more than drains_timeout seconds fails; failures in
    # a row wait from drains_backoff_base doubling to drains_backoff_max seconds. HTTPS drains
    # POST up to drains_batch_lines messages (drains_batch_bytes) at once, waiting drains_linger
    # seconds for a batch to fill. TLS receivers are checked against the system's CAs and those of
    # drains_ca_bundle (a PEM file). http:// drains are refused unless to loopback or with
    # drains_allow_http.
    drains_buffer_lines: int = 20_000
    drains_buffer_bytes: int = 8 * 1024 * 1024
    drains_spill_bytes: int = 64 * 1024 * 1024
    drains_timeout: float = 10.0
    drains_backoff_base: float = 0.5
    drains_backoff_max: float = 60.0
    drains_batch_lines: int = 1000
    drains_batch_bytes: int = 1024 * 1024
    drains_linger: float = 0.2
    drains_ca_bundle: str = ""
    drains_allow_http: bool = False
    # How often the drains look for add-ons to follow: an add-on's output goes to the drains of
    # the apps it is attached to (core_drains_addons).
    drains_addon_poll: float = 5.0
    # Alerts (lbsolo/alerts.py has the rules): the loop looks every alerts_interval seconds and
    # keeps the newest alerts_history resolved incidents. Alert email goes to smtp_url
    # (smtp://user:pass@host:587?from=…&to=…, or smtps://; see lbsolo/alerts_smtp.py), its TLS
    # checked against the system's CAs and smtp_ca_bundle's; a failed send waits
    # alerts_smtp_backoff seconds, doubling, up to 300, and gives up after 8 tries.
    alerts_interval: float = 10.0
    alerts_history: int = 200
    smtp_url: str = field(default="", repr=False)  # holds a password: never in a repr
    smtp_ca_bundle: str = ""
    smtp_timeout: float = 10.0
    alerts_smtp_backoff: float = 5.0
    deploy_timeout: float = 60.0
    # A browser's page request for a sleeping app still waking after this many seconds gets a
    # "starting" page that reloads itself (other clients keep waiting for the app's answer).
    wake_page_after: float = 2.0
    build_timeout: float = 900.0
    build_memory: str = "2g"
    max_upload_bytes: int = 512 * 1024 * 1024
    # Request bodies the API accepts (counted while reading): JSON and UI forms, and inbound push
    # webhooks, whose signature can only be checked once the body is read. Uploads and git
    # pushes get max_upload_bytes.
    max_json_bytes: int = 1024 * 1024
    max_hook_bytes: int = 5 * 1024 * 1024
    # Outbound webhooks refuse loopback, link-local, cloud-metadata and unspecified addresses
    # unless this is on (for receivers on this machine, e.g. in tests).
    webhook_allow_private: bool = False
    # Answer plain-HTTP requests for lbsolo.<domain> (the UI and API through the proxy) with a
    # redirect to HTTPS; only with an HTTPS listener (proxy_https_port).
    ui_https_redirect: bool = False
    stop_timeout: int = 10
    drain_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    # `lbsolo restart`: how long the new daemon may take to serve before the old one gives up on it.
    handover_timeout: float = 60.0
    keep_releases: int = 5
    # Builds kept per app (their records and stored logs); older ones are forgotten as new ones start.
    keep_builds: int = 20
    # $LBSOLO_HOME/logs/access.log moves to access.log.1 past this size, and `access_log_keep` old
    # files stay. 0: no access log at all.
    access_log_max_bytes: int = 64 * 1024 * 1024
    access_log_keep: int = 3
    # $LBSOLO_HOME/audit/audit.log (who changed what) moves to audit.log.1 past this size, and
    # `audit_keep` old files stay; the oldest is dropped.
    audit_max_bytes: int = 16 * 1024 * 1024
    audit_keep: int = 5
    # `deploy --git` and push webhooks clone over https, ssh and git only; local paths and
    # file:// (which let an API caller read any repository the daemon can) need this on.
    git_allow_local: bool = False
    # Preview apps of pull requests running at once on the whole platform (each app also has its own cap).
    max_previews: int = 10
    # Fault injection for tests: a rollout that has done this step's work (a DeployStep value,
    # e.g. "swap"), or an ACME order that has done "acme_ordered" or "acme_answered", waits there
    # forever, so that a test can kill the daemon at that step. Empty: off.
    hold_at_step: str = ""

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Build settings from the environment, then apply non-None overrides."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"LBSOLO_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" in values:
            values["home"] = Path(values["home"]).expanduser()
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def dns_ipv4(self) -> tuple[str, ...]:
        if self.public_ipv4:
            return tuple(a.strip() for a in self.public_ipv4.split(",") if a.strip())
        if self.proxy_host in ("0.0.0.0", "", "::"):
            return ("127.0.0.1",)
        return (self.proxy_host,) if ":" not in self.proxy_host else ()

    @property
    def dns_ipv6(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.public_ipv6.split(",") if a.strip())

    @property
    def state_path(self) -> Path:
        return self.home / "state.json"

    @property
    def token_path(self) -> Path:
        return self.home / "token"

    @property
    def instance_path(self) -> Path:
        """Set by `lbsolo restore`: the restored platform keeps its instance id (its images' and volumes' labels)."""
        return self.home / "instance"

    @property
    def runtime_path(self) -> Path:
        """Where the running daemon records the addresses it actually bound."""
        return self.home / "daemon.json"

    @property
    def socket_path(self) -> Path:
        """The API's unix socket (mode 0600) for the local CLI."""
        return self.home / "api.sock"

    @property
    def acme_on(self) -> bool:
        return bool(self.acme_email.strip())

    @property
    def acme_directory_url(self) -> str:
        return ACME_DIRECTORIES.get(self.acme_directory.strip().lower(), self.acme_directory.strip())

    @property
    def acme_staging_url(self) -> str:
        name = self.acme_staging_directory.strip()
        return ACME_DIRECTORIES.get(name.lower(), name)

    @property
    def acme_dir(self) -> Path:
        """The ACME account key and the certificates issued (0600 files)."""
        return self.home / "acme"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def audit_path(self) -> Path:
        return self.home / "audit" / "audit.log"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def tmp_dir(self) -> Path:
        """Scratch files (request bodies the proxy holds); emptied at each start."""
        return self.home / "tmp"

    def app_url(self, app: str) -> str:
        port = "" if self.proxy_port == 80 else f":{self.proxy_port}"
        return f"http://{app}.{self.domain}{port}"


def _coerce(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    if kind == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "Path":
        return Path(raw)
    return raw
