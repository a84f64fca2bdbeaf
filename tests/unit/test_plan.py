from lbsolo.core import ActionKind, plan, routes_for
from lbsolo.models import Replica
from lbsolo.proxy import Target


def rep(id, app="hello", release=1, running=True, port=40000, process="web", started="2026-01-01"):
    return Replica(
        id=id, name=f"c-{id}", app=app, release=release, process=process, running=running,
        status="running" if running else "exited", host_port=port if running else None, started_at=started,
    )  # fmt: skip


def kinds(actions):
    return [(a.kind, a.app, a.replica.id if a.replica else None) for a in actions]


def test_nothing_to_do_when_desired_matches_actual():
    assert plan({"hello": 1}, [rep("a")]) == []


def test_adopts_running_replica_and_routes_to_it():
    actual = [rep("a", port=41000)]
    assert plan({"hello": 1}, actual) == []
    route = routes_for({"hello": 1}, actual)["hello"]
    assert route.targets == (Target("127.0.0.1", 41000),)
    assert route.release == "v1"


def test_starts_a_missing_replica():
    assert kinds(plan({"hello": 2}, [])) == [(ActionKind.RUN, "hello", None)]


def test_restarts_a_stopped_replica_instead_of_creating_another():
    assert kinds(plan({"hello": 1}, [rep("a", running=False)])) == [(ActionKind.RESTART, "hello", "a")]


def test_removes_duplicates_keeping_the_oldest():
    actual = [rep("new", started="2026-02-01"), rep("old", started="2026-01-01")]
    assert kinds(plan({"hello": 1}, actual)) == [(ActionKind.REMOVE, "hello", "new")]


def test_removes_old_releases_and_orphans():
    actual = [rep("a", release=1), rep("b", release=2), rep("z", app="gone")]
    assert sorted(kinds(plan({"hello": 2}, actual))) == sorted(
        [(ActionKind.REMOVE, "hello", "a"), (ActionKind.REMOVE, "gone", "z")]
    )


def test_app_without_release_runs_nothing_and_routes_to_nothing():
    assert plan({"new": None}, []) == []
    assert routes_for({"new": None}, [])["new"].targets == ()


def test_routes_skip_stopped_and_other_releases():
    actual = [rep("a", release=1, running=False), rep("b", release=2, port=42000), rep("w", process="worker")]
    assert routes_for({"hello": 1}, actual)["hello"].targets == ()
    assert routes_for({"hello": 2}, actual)["hello"].targets == (Target("127.0.0.1", 42000),)
