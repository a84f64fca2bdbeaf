"""`lbsolo export k8s APP`: the app's current release as Kubernetes manifests, for a team moving on
to a cluster. YAML on standard output (for `kubectl apply -f -`) or one file per object in a
directory; the daemon makes them (lbsolo.export_k8s), this verb only writes them down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lbsolo.cli.common import AppArg, _client, app, clean_errors, console, escape

export_app = typer.Typer(help="Write an app out for another platform.", no_args_is_help=True)
app.add_typer(export_app, name="export")


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """One YAML document per object, in order, keys as the API gave them (kind before spec)."""
    import yaml  # the CLI only, and only for this verb

    return "".join(
        "---\n" + yaml.safe_dump(o, sort_keys=False, default_flow_style=False, allow_unicode=True) for o in objects
    )


@export_app.command("k8s")
@clean_errors
def export_k8s(
    name: AppArg,
    out: Annotated[Path | None, typer.Option(help="Write one file per object here (default: all to stdout).")] = None,
    registry: Annotated[
        str | None, typer.Option(help="Registry the image is pushed to, e.g. registry.example.com/team.")
    ] = None,
    volume_size: Annotated[str, typer.Option(help="Size each volume's claim asks for.")] = "1Gi",
) -> None:
    """Kubernetes manifests of an app's current release: a Deployment per process type (probes,
    resources, replicas), a Service and an Ingress for web, a ConfigMap and a Secret for its
    config (secret values in the Secret only), a PersistentVolumeClaim per volume."""
    with _client() as c:
        objects = c.export_k8s(name, registry, volume_size)
    if out is None:
        typer.echo(to_yaml(objects), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    for i, o in enumerate(objects, 1):
        path = out / f"{i:02d}-{o['kind'].lower()}-{o['metadata']['name']}.yaml"
        path.write_text(to_yaml([o]))
        if o["kind"] == "Secret":
            path.chmod(0o600)
        console.print(f"wrote {escape(str(path))}")
    image = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    console.print(
        f"The pods run {escape(image)}: push the release's image there first "
        f"(docker tag lbsolo/{name}:{image.rsplit(':', 1)[-1]} {escape(image)} && docker push {escape(image)})."
    )
