"""`lbsolo export k8s` (issue 17): the manifests of an app's release, checked against the official
schemas of the pinned Kubernetes version (kubernetes-validate ships them; offline), and what each
object carries: secrets only in the Secret, probes from the health check, limits, volumes, hosts."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from lbsolo.cli.verbs_export import to_yaml
from lbsolo.config import Settings
from lbsolo.errors import InvalidInput
from lbsolo.export_k8s import KUBERNETES_VERSION, export_target, manifests, quantity_cpu, quantity_memory
from lbsolo.models import App, Release


def shop() -> tuple[App, Release]:
    app = App(
        name="shop",
        release=3,
        formation={"web": 2, "worker": 1},
        resources={"web": {"memory": "512m", "cpus": 0.5}},
        volumes={"uploads": "/data/uploads"},
        domains=["shop.example.com", "*.shop.example.com"],
    )
    release = Release(
        app="shop",
        version=3,
        image="sha256:" + "a" * 64,
        config={"GREETING": "hi", "DATABASE_URL": "postgres://u:pw@db/shop", "API_TOKEN": "t0k"},
        secrets=["DATABASE_URL"],
        processes={"web": "python app.py", "worker": "python worker.py", "release": "python migrate.py"},
        health={"path": "/healthz", "interval": 0.5, "timeout": 2.0, "retries": 2, "grace": 3},
    )
    return app, release


def objects(**kw) -> list[dict]:
    app, release = shop()
    settings = Settings(domain="apps.example.net", container_port=5000)
    target = export_target("shop", release.label, kw.get("registry", "registry.example.com/team"), "2Gi", settings)
    return manifests(app, release, {"DATABASE_URL", "API_TOKEN"}, target)


def by(kind: str, objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def test_every_object_is_valid_for_the_pinned_kubernetes_version_strictly():
    objs = objects()
    assert [o["kind"] for o in objs] == [
        "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Deployment", "Service", "Ingress",
    ]  # fmt: skip
    for o in objs:
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
    # and as YAML, as the CLI writes them
    assert list(yaml.safe_load_all(to_yaml(objs))) == objs


def test_a_broken_object_is_caught_by_the_same_check():
    """The check is real: an object with a misspelt field fails it."""
    deployment = by("Deployment", objects())[0]
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_secret_values_are_in_the_secret_only():
    objs = objects()
    (config,), (secret,) = by("ConfigMap", objs), by("Secret", objs)
    assert config["data"] == {"GREETING": "hi"}
    assert secret["stringData"] == {"API_TOKEN": "t0k", "DATABASE_URL": "postgres://u:pw@db/shop"}
    rest = to_yaml([o for o in objs if o["kind"] != "Secret"])
    assert "pw@db" not in rest and "t0k" not in rest


def test_deployments_carry_the_formation_command_probes_limits_and_volumes():
    web, worker = by("Deployment", objects())
    assert (web["metadata"]["name"], worker["metadata"]["name"]) == ("shop-web", "shop-worker")
    assert web["spec"]["replicas"] == 2 and worker["spec"]["replicas"] == 1
    assert web["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    c = web["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.example.com/team/shop:v3"
    assert c["command"] == ["/bin/sh", "-c", "python app.py"]
    assert {"name": "PORT", "value": "5000"} in c["env"] and {"name": "LBSOLO_RELEASE", "value": "v3"} in c["env"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["successThreshold"] == 2 and c["readinessProbe"]["initialDelaySeconds"] == 3
    assert c["resources"]["limits"] == {"memory": "512Mi", "cpu": "500m"} == c["resources"]["requests"]
    assert c["volumeMounts"] == [{"name": "uploads", "mountPath": "/data/uploads"}]
    w = worker["spec"]["template"]["spec"]["containers"][0]
    assert "ports" not in w and "readinessProbe" not in w and "resources" not in w
    assert by("PersistentVolumeClaim", objects())[0]["spec"]["resources"]["requests"]["storage"] == "2Gi"


def test_the_ingress_serves_the_apps_own_host_and_its_domains():
    (ingress,) = by("Ingress", objects())
    hosts = [r["host"] for r in ingress["spec"]["rules"]]
    assert hosts == ["shop.apps.example.net", "shop.example.com", "*.shop.example.com"]
    (service,) = by("Service", objects())
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "shop", "app.kubernetes.io/managed-by": "lbsolo-export",
        "app.kubernetes.io/component": "web",
    }  # fmt: skip


def test_without_a_registry_the_image_is_lbsolos_local_tag():
    web = by("Deployment", objects(registry=None))[0]
    assert web["spec"]["template"]["spec"]["containers"][0]["image"] == "lbsolo/shop:v3"


def test_quantities():
    assert quantity_memory("512m") == "512Mi" and quantity_memory("1g") == "1Gi"
    assert quantity_memory("1536m") == "1536Mi"
    assert quantity_cpu(0.25) == "250m" and quantity_cpu(2) == "2000m"


@pytest.mark.parametrize(
    ("registry", "size", "message"),
    [
        ("Registry With Spaces", "1Gi", "invalid registry"),
        ("https://registry.example.com", "1Gi", "invalid registry"),
        ("registry.example.com", "1GB", "invalid volume size"),
        ("registry.example.com", "0Gi", "invalid volume size"),
    ],
)
def test_bad_export_options_are_refused_clearly(registry, size, message):
    with pytest.raises(InvalidInput, match=message):
        export_target("shop", "v3", registry, size, Settings())


def test_the_export_is_the_admins_to_read():
    """It carries the secret values (in its Secret): read and deploy tokens are refused it."""
    from lbsolo.api.scopes import refusal

    params = {"name": "shop"}
    assert refusal("admin", (), "GET", "/api/apps/{name}/export/k8s", params) is None
    for role, apps in (("read", ()), ("deploy", ("shop",)), ("admin", ("shop",))):
        why = refusal(role, apps, "GET", "/api/apps/{name}/export/k8s", params)
        assert (why is None) == (role == "admin"), (role, why)
