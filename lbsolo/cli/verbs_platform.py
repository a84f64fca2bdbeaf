"""Verbs on the platform: tokens, webhooks, static routes, DNS set-up, the local CA, ACME certificates,
the version."""

from __future__ import annotations

from typing import Annotated

import typer
import typer.main

from lbsolo import __version__
from lbsolo.cli import client_certs as certs_api
from lbsolo.cli.common import (
    Table,
    _client,
    _when,
    app,
    clean_errors,
    console,
    err,
    escape,
    validate_app_name,
)
from lbsolo.cli.verbs_apps import _since
from lbsolo.config import Settings
from lbsolo.errors import LbsoloError


@app.command("tokens")
@clean_errors
def tokens_list() -> None:
    """List extra API tokens with their role and apps (only their prefixes are known)."""
    with _client() as c:
        rows = c.tokens()
    table = Table("id", "name", "role", "apps", "prefix", "created", "last used")
    for t in rows:
        apps = ", ".join(t.get("apps") or []) or "all"
        role = t.get("role") or "admin"
        table.add_row(
            t["id"], t["name"], role, apps, t["prefix"] + "…", _when(t["created_at"]), _when(t.get("last_used"))
        )
    console.print(table if rows else "No extra tokens; the admin token is in $LBSOLO_HOME/token")


@app.command("tokens:create")
@clean_errors
def tokens_create(
    name: Annotated[str, typer.Argument(help="What the token is for, e.g. ci.")],
    role: Annotated[
        str,
        typer.Option(
            help="admin (everything), deploy (deploy, push, config, scale, rollback, run, logs) or read (GET only)."
        ),
    ] = "admin",
    apps: Annotated[
        list[str] | None, typer.Option("--app", help="Limit the token to this app (repeat for more).")
    ] = None,
) -> None:
    """Create an API token; it is shown once and stored only as a hash."""
    with _client() as c:
        out = c.create_token(name, role, apps or [])
    console.print(out["token"], highlight=False, markup=False)
    scope = f"{out.get('role', role)}" + (f" on {', '.join(out['apps'])}" if out.get("apps") else " on every app")
    err.print(f"token {out['id']} ({name}, {scope}) created; it is not shown again")


@app.command("tokens:revoke")
@clean_errors
def tokens_revoke(token: Annotated[str, typer.Argument(help="Token id or name.")]) -> None:
    """Revoke an API token at once."""
    with _client() as c:
        c.revoke_token(token)
    console.print(f"revoked {token}")


@app.command("audit")
@clean_errors
def audit(
    app_name: Annotated[str | None, typer.Option("--app", help="Only this app's or add-on's lines.")] = None,
    since: Annotated[str | None, typer.Option(help="Only lines newer than e.g. 1h, 30m, 2d.")] = None,
    actor: Annotated[
        str | None, typer.Option(help="Only this actor's: a token name (git:NAME too), admin, ui.")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="At most this many lines, the newest.")] = 50,
) -> None:
    """Who changed what: every change made through the API, the UI, git push or a webhook, refused ones too."""
    with _client() as c:
        rows = c.audit(app=app_name, since=_since(since), actor=actor, n=n)
    table = Table("time", "actor", "source", "action", "app", "status", "changed")
    for r in rows:
        changed = " ".join(f"{k}={_short(v)}" for k, v in sorted((r.get("changed") or {}).items()))
        target = r.get("app") or (f"addon {r['addon']}" if r.get("addon") else "")
        table.add_row(
            _when(r.get("ts")), escape(str(r.get("actor", ""))), escape(str(r.get("source", ""))),
            escape(str(r.get("action", ""))), escape(target), str(r.get("status", "")), escape(changed),
        )  # fmt: skip
    console.print(table if rows else "No audit lines match.")


def _short(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


@app.command("webhooks")
@clean_errors
def webhooks_list() -> None:
    """List outbound webhooks."""
    with _client() as c:
        rows = c.webhooks()
    table = Table("id", "url", "app", "events", "slack")
    for w in rows:
        table.add_row(w["id"], w["url"], w.get("app") or "(all)", ", ".join(w.get("kinds") or ["*"]), str(w["slack"]))
    console.print(table if rows else "No webhooks")


@app.command("webhooks:add")
@clean_errors
def webhooks_add(
    url: Annotated[str, typer.Argument(help="http(s) URL that receives POSTed events.")],
    app_name: Annotated[str | None, typer.Option("--app", "-a", help="Only this app's events.")] = None,
    kinds: Annotated[list[str] | None, typer.Option("--event", "-e", help="Event kinds, e.g. deploy.*")] = None,
    slack: Annotated[bool, typer.Option("--slack", help="Slack-compatible payload.")] = False,
) -> None:
    """Send events to a URL, signed with a secret (X-Lbsolo-Signature: sha256=HMAC)."""
    with _client() as c:
        out = c.add_webhook(url, app_name, kinds, slack)
    console.print(f"webhook {out['id']} added; secret: {out.get('secret', '(hidden)')}", highlight=False)


@app.command("webhooks:remove")
@clean_errors
def webhooks_remove(hook_id: Annotated[str, typer.Argument(help="Webhook id.")]) -> None:
    """Stop sending events to a webhook."""
    with _client() as c:
        c.remove_webhook(hook_id)
    console.print(f"removed {hook_id}")


@app.command("routes")
@clean_errors
def routes_list() -> None:
    """List static routes: hosts routed to services on this machine that lbsolo does not run."""
    with _client() as c:
        rows = c.routes()
    table = Table("name", "to", "url", "domains")
    for r in rows:
        table.add_row(r["name"], r["to"], r["url"], ", ".join(r["domains"]))
    console.print(table if rows else "No static routes (add one: lbsolo routes:add NAME --to 127.0.0.1:PORT)")


@app.command("routes:add")
@clean_errors
def routes_add(
    name: Annotated[str, typer.Argument(help="Served at <name>.<domain>; not an app's name.")],
    to: Annotated[str, typer.Option("--to", help="HOST:PORT on this machine, e.g. 127.0.0.1:3000.")],
    domains: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Also route this host.")] = None,
) -> None:
    """Route <name>.<domain> to a service on this machine that lbsolo does not run (proxy and DNS follow)."""
    validate_app_name(name, "route name")
    with _client() as c:
        out = c.add_route(name, to, domains)
    extra = f" and {', '.join(out['domains'])}" if out["domains"] else ""
    console.print(f"{out['url']}{extra} -> {out['to']}", highlight=False)


@app.command("routes:remove")
@clean_errors
def routes_remove(name: Annotated[str, typer.Argument(help="Static route name.")]) -> None:
    """Stop routing a static route."""
    with _client() as c:
        c.remove_route(name)
    console.print(f"removed {name}", highlight=False)


@app.command("dns:setup")
@clean_errors
def dns_setup(
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the files and restart the resolver (needs root).")
    ] = False,
    system: Annotated[
        str | None, typer.Option(help="linux-resolved, linux-other or macos (default: detected).")
    ] = None,
) -> None:
    """Print (or apply) the steps that make this machine's resolver ask lbsolo for its domain."""
    import subprocess

    from lbsolo.cli.dnssetup import apply_plan, detect_system, setup_plan

    settings = Settings.load()
    plan = setup_plan(settings.domain, settings.dns_host, settings.dns_port, system or detect_system())
    console.print(plan.text, highlight=False, markup=False)
    if apply:
        try:
            written = apply_plan(plan, run=lambda cmd: subprocess.run(cmd, check=True))
        except (OSError, subprocess.CalledProcessError) as e:
            raise LbsoloError(f"could not apply the DNS setup: {e}") from e
        console.print(f"applied: {', '.join(map(str, written))}")


@app.command("tls:trust")
@clean_errors
def tls_trust() -> None:
    """Print how to make this machine trust lbsolo's local CA (for https://<app>.<domain>)."""
    from lbsolo.proxy_tls import LocalCA

    settings = Settings.load()
    ca = LocalCA(settings.tls_dir, domain=settings.domain).load_or_create()
    console.print(ca.trust_instructions(), highlight=False, markup=False)
    problem = ca.problem()
    if problem:
        err.print(f"[yellow]warning:[/] {escape(problem)}")


@app.command("tls:rotate-ca")
@clean_errors
def tls_rotate_ca() -> None:
    """Replace lbsolo's local CA with a new one (stop the daemon first); then trust the new one.

    Works on the files under $LBSOLO_HOME/tls: the old key is deleted, the old certificate kept as
    ca.pem.old. Certificates the old CA signed stop verifying; `lbsolo up` then serves new ones.
    """
    import json
    import os

    from lbsolo.proxy_tls import LocalCA

    settings = Settings.load()
    try:
        pid = int(json.loads(settings.runtime_path.read_text())["pid"])
        os.kill(pid, 0)
        running = True
    except PermissionError:  # someone else's process: it exists
        running = True
    except (OSError, ValueError, KeyError, TypeError):
        running = False  # no daemon runs with this home
    if running:
        raise LbsoloError(f"the daemon (pid {pid}) is running: stop it, rotate the CA, then start it again")
    ca = LocalCA(settings.tls_dir, domain=settings.domain).rotate()
    console.print(f"new local CA: {ca.cert_path} (limited to {settings.domain}, localhost and loopback addresses)")
    console.print("Every machine that trusted the old CA must trust this one instead:", highlight=False)
    console.print(ca.trust_instructions(), highlight=False, markup=False)


DomainArg = Annotated[str, typer.Argument(help="A custom domain of an app or static route.")]


def _cert_lines(c: dict) -> list[str]:
    return [
        f"domain        {c['domain']}",
        f"status        {c['status']}",
        f"issuer        {c['issuer'] or '-'}",
        f"expires       {_when(c['not_after'])}{' (under 14 days: renew it)' if c.get('expires_soon') else ''}",
        f"renews        {_when(c['renew_at'])}",
        f"last attempt  {_when(c['last_attempt'])}",
        f"last error    {c['last_error'] or '-'}",
        f"next try      {_when(c['next_try']) if c['status'] != 'valid' else '-'}",
        f"CA orders     {c['ca_attempts_last_hour']} in the last hour",
        f"challenge     {c.get('validated_by') or '-'} worked last; next: {c.get('challenge') or 'http-01'}",
    ]


def _expires(c: dict) -> str:
    """The expiry, red with under 14 days left (a renewal has not succeeded)."""
    when = _when(c["not_after"])
    return f"[red]{escape(when)}[/red]" if c.get("expires_soon") else escape(when)


def _cert_result(c: dict) -> None:
    console.print("\n".join(_cert_lines(c)), highlight=False)
    if c["last_error"]:
        text = f"no certificate for {c['domain']}: {c['last_error']} (retried by itself; see lbsolo certs)"
        err.print(text, style="red", markup=False, highlight=False)
        raise typer.Exit(1)


@app.command("certs")
@clean_errors
def certs_list() -> None:
    """List ACME certificates: domain, issuer, expiry, last attempt and last error (LBSOLO_ACME_EMAIL turns ACME on)."""
    with _client() as c:
        rows = certs_api.certs(c)
    table = Table("domain", "status", "issuer", "expires", "last attempt", "last error")
    for r in rows:
        table.add_row(
            r["domain"], r["status"], r["issuer"] or "-", _expires(r), _when(r["last_attempt"]),
            escape(r["last_error"] or "-"),
        )  # fmt: skip
    console.print(table if rows else "No certificates yet: a public custom domain (lbsolo domains:add) gets one")


@app.command("certs:info")
@clean_errors
def certs_info(domain: DomainArg) -> None:
    """One domain's ACME certificate: issuer, expiry, renewal, last attempt and error, orders this hour."""
    with _client() as c:
        out = certs_api.cert(c, domain)
    console.print("\n".join(_cert_lines(out)), highlight=False)


@app.command("certs:issue")
@clean_errors
def certs_issue(domain: DomainArg) -> None:
    """Ask the CA for a certificate now: a preflight first (the name points here, this proxy answers), then an order."""
    with _client() as c:
        out = certs_api.issue(c, domain)
    _cert_result(out)


@app.command("certs:renew")
@clean_errors
def certs_renew(domain: DomainArg) -> None:
    """Get a new certificate now, whatever the expiry of the one served (at most a few orders an hour)."""
    with _client() as c:
        out = certs_api.renew(c, domain)
    _cert_result(out)


@app.command()
def version() -> None:
    """Print lbsolo's version."""
    console.print(f"lbsolo {__version__}")
