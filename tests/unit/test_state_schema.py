"""The state file's schema version: earlier files are migrated (a copy kept aside), later ones refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lbsolo.errors import InvalidInput
from lbsolo.state import SCHEMA, State, migrate, schema_of

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_file_from_before_schema_versions_is_migrated_and_its_data_kept(tmp_path):
    path = tmp_path / "state.json"
    shutil.copy(FIXTURES / "state-schema-0.json", path)
    before = path.read_bytes()
    state = State(path)
    assert schema_of(json.loads(path.read_text())) == SCHEMA
    assert (tmp_path / "state.json.schema-0.bak").read_bytes() == before
    app = state.get_app("shop")
    assert (app.release, app.formation, app.secrets, app.domains) == (2, {"web": 2}, ["TOKEN"], ["shop.example.test"])
    assert app.request_buffering is True  # a field newer than the file: its default
    assert [r.version for r in state.list_releases("shop")] == [1, 2]
    assert [r.name for r in state.list_routes()] == ["grafana"]
    state.close()
    State(path).close()  # opening it again changes nothing and copies nothing more
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.schema-0.bak"]


def test_a_new_file_is_stamped_without_a_copy(tmp_path):
    path = tmp_path / "state.json"
    State(path).close()
    assert schema_of(json.loads(path.read_text())) == SCHEMA
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_file_of_a_newer_lbsolo_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "state.json"
    data = {"apps": {}, "_meta": {"1": {"schema": SCHEMA + 1}}}
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInput, match=f"schema {SCHEMA + 1}, written by a newer lbsolo"):
        State(path)
    assert json.loads(path.read_text()) == data


def test_migrate_runs_each_step_once_in_order():
    data = migrate({"apps": {"1": {"name": "a"}}})
    assert schema_of(data) == SCHEMA and data["apps"] == {"1": {"name": "a"}}
    assert migrate(data) == data


def test_a_schema_1_file_gets_the_addons_table_and_keeps_its_apps(tmp_path):
    path = tmp_path / "state.json"
    shutil.copy(FIXTURES / "state-schema-1.json", path)
    state = State(path)
    data = json.loads(path.read_text())
    assert schema_of(data) == SCHEMA and data["addons"] == {}
    assert (tmp_path / "state.json.schema-1.bak").exists()
    assert [a.name for a in state.list_apps()] == ["shop"] and state.list_addons() == []
    state.close()


def test_add_ons_share_the_namespace_of_apps_and_static_routes(tmp_path):
    from lbsolo.errors import Conflict
    from lbsolo.models import App, StaticRoute
    from lbsolo.models_addons import Addon

    state = State(tmp_path / "state.json")
    state.create_app(App("shop"))
    state.add_route(StaticRoute.create("grafana", "127.0.0.1:3000"))
    for taken in ("shop", "grafana"):
        with pytest.raises(Conflict):
            state.create_addon(Addon(taken, "postgres", "16"))
    state.create_addon(Addon("shop-db", "postgres", "16", credentials={"user": "u", "password": "p"}))
    with pytest.raises(Conflict, match="already exists"):
        state.create_addon(Addon("shop-db", "redis", "7"))
    with pytest.raises(Conflict, match="is an add-on"):
        state.create_app(App("shop-db"))
    with pytest.raises(Conflict, match="is an add-on"):
        state.add_route(StaticRoute.create("shop-db", "127.0.0.1:3000"))
    assert state.get_addon("shop-db").public()["credentials"] == {"user": "u", "password": "********"}
    state.close()


def test_a_schema_2_file_gets_the_cron_tables_and_keeps_its_apps_and_add_ons(tmp_path):
    from lbsolo.cron_plan import CronJob, CronRun, RunStatus, Trigger

    path = tmp_path / "state.json"
    shutil.copy(FIXTURES / "state-schema-2.json", path)
    state = State(path)
    data = json.loads(path.read_text())
    assert schema_of(data) == SCHEMA and data["cron_jobs"] == {} and data["cron_runs"] == {}
    assert (tmp_path / "state.json.schema-2.bak").exists()
    assert [a.name for a in state.list_apps()] == ["shop"] and [a.name for a in state.list_addons()] == ["shop-db"]
    state.add_cron_job(CronJob("shop", "c1", "0 3 * * *", "echo hi", created_at=1.0))
    state.save_cron_run(
        CronRun("r1", "shop", "c1", Trigger.MANUAL, RunStatus.SUCCEEDED, 2.0, finished=3.0, exit_code=0)
    )
    state.close()
    state = State(path)
    assert [j.id for j in state.list_cron_jobs("shop")] == ["c1"]
    assert [(r.id, r.duration) for r in state.list_cron_runs("shop", "c1")] == [("r1", 1.0)]
    state.delete_app("shop")
    assert state.list_cron_jobs() == [] and state.list_cron_runs() == []
    state.close()


def test_a_schema_3_file_keeps_its_tokens_as_admins_over_every_app(tmp_path):
    """Tokens from before roles could do everything: they stay admins, limited to no app."""
    path = tmp_path / "state.json"
    shutil.copy(FIXTURES / "state-schema-3.json", path)
    state = State(path)
    data = json.loads(path.read_text())
    assert schema_of(data) == SCHEMA == 5
    assert (tmp_path / "state.json.schema-3.bak").exists()
    (token,) = state.list_tokens()
    assert token["name"] == "ci" and token["role"] == "admin" and token["apps"] == []
    assert [a.name for a in state.list_apps()] == ["shop"]
    state.close()


def test_a_schema_4_file_gets_the_drains_table_and_keeps_its_apps_and_tokens(tmp_path):
    from lbsolo.drains import Drain

    path = tmp_path / "state.json"
    shutil.copy(FIXTURES / "state-schema-4.json", path)
    state = State(path)
    data = json.loads(path.read_text())
    assert schema_of(data) == SCHEMA == 5 and data["drains"] == {}
    assert (tmp_path / "state.json.schema-4.bak").exists()
    assert [a.name for a in state.list_apps()] == ["shop"]
    (token,) = state.list_tokens()
    assert token["role"] == "deployer" and token["apps"] == ["shop"]
    state.add_drain(Drain("shop", "d1", "syslog+tls://logs.example.com:6514", "d.tok", 1.0))
    state.close()
    state = State(path)
    assert [(d.id, d.url) for d in state.list_drains("shop")] == [("d1", "syslog+tls://logs.example.com:6514")]
    state.delete_app("shop")
    assert state.list_drains() == []
    state.close()
