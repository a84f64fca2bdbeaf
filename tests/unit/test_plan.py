import pytest

from lbsolo.core_plan import ActionKind, Desired, images_to_remove, interrupted, plan, rollback_target, routes_for
from lbsolo.errors import InvalidInput, NotFound
from lbsolo.models import ONE_OFF, DeployStep, Release, ReleaseStatus, Replica, parse_formation
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


def test_one_off_containers_are_left_to_whoever_started_them():
    # A test phase runs before its release exists; `lbsolo run` may outlast many passes.
    actual = [rep("t", release=2, process=ONE_OFF, port=None), rep("a"), rep("x", app="gone", process=ONE_OFF)]
    assert plan({"hello": 1}, actual) == []
    assert routes_for({"hello": 1}, actual)["hello"].targets == (Target("127.0.0.1", 40000),)


def test_app_without_release_runs_nothing_and_routes_to_nothing():
    assert plan({"new": None}, []) == []
    assert routes_for({"new": None}, [])["new"].targets == ()


def test_routes_skip_stopped_and_other_releases():
    actual = [rep("a", release=1, running=False), rep("b", release=2, port=42000), rep("w", process="worker")]
    assert routes_for({"hello": 1}, actual)["hello"].targets == ()
    assert routes_for({"hello": 2}, actual)["hello"].targets == (Target("127.0.0.1", 42000),)


def test_formation_runs_each_process_type_and_removes_scaled_down_ones():
    actual = [rep("w1"), rep("k1", process="worker", port=None), rep("k2", process="worker", port=None)]
    desired = {"hello": Desired(1, {"web": 3, "worker": 1})}
    got = kinds(plan(desired, actual))
    assert got.count((ActionKind.RUN, "hello", None)) == 2
    removed = [k for k in got if k[0] is ActionKind.REMOVE]
    assert len(removed) == 1 and removed[0][2] in ("k1", "k2")


def test_process_scaled_to_zero_is_removed():
    actual = [rep("w1"), rep("k1", process="worker", port=None)]
    assert kinds(plan({"hello": Desired(1, {"web": 1, "worker": 0})}, actual)) == [(ActionKind.REMOVE, "hello", "k1")]


def rel(version, status=ReleaseStatus.SUPERSEDED):
    return Release(app="hello", version=version, image=f"sha256:{version}", status=status)


def test_rollback_goes_to_the_previous_good_release():
    releases = [rel(1), rel(2), rel(3, ReleaseStatus.FAILED), rel(4, ReleaseStatus.ACTIVE)]
    assert rollback_target(releases, 4, None).version == 2
    assert rollback_target(releases, 4, 1).version == 1


@pytest.mark.parametrize(("version", "error"), [(3, InvalidInput), (4, InvalidInput), (9, NotFound)])
def test_rollback_refuses_failed_current_and_unknown_releases(version, error):
    releases = [rel(1), rel(2), rel(3, ReleaseStatus.FAILED), rel(4, ReleaseStatus.ACTIVE)]
    with pytest.raises(error):
        rollback_target(releases, 4, version)


def test_rollback_needs_an_earlier_release():
    with pytest.raises(InvalidInput, match="no earlier release"):
        rollback_target([rel(1, ReleaseStatus.ACTIVE)], 1, None)


@pytest.mark.parametrize(
    ("items", "expected"), [(["web=3"], {"web": 3}), (["web=1", "worker=0"], {"web": 1, "worker": 0})]
)
def test_parse_formation(items, expected):
    assert parse_formation(items) == expected


@pytest.mark.parametrize("items", [[], ["web"], ["web=x"], ["Web=1"], ["web=99"]])
def test_parse_formation_rejects(items):
    with pytest.raises(InvalidInput):
        parse_formation(items)


def test_image_retention_keeps_the_last_releases_and_the_current_one():
    releases = [rel(v) for v in range(1, 9)]
    images = [f"sha256:{v}" for v in range(1, 9)] + ["sha256:orphan"]
    assert images_to_remove(releases, 8, images, keep=5) == ["sha256:1", "sha256:2", "sha256:3", "sha256:orphan"]
    # a rollback to v2 keeps v2's image even though it is old
    assert "sha256:2" not in images_to_remove(releases, 2, images, keep=5)


def _rel(version: int, status: ReleaseStatus, step: DeployStep | None = None) -> Release:
    return Release("web1", version, f"sha256:{version}", status=status, step=step)


@pytest.mark.parametrize("step", [DeployStep.RELEASE_PHASE, DeployStep.START, DeployStep.WAIT_READY, None])
def test_a_rollout_killed_before_its_swap_failed_and_the_current_release_stays(step):
    releases = [_rel(1, ReleaseStatus.ACTIVE, DeployStep.DONE), _rel(2, ReleaseStatus.DEPLOYING, step)]
    finish, failed = interrupted(releases, 1)
    assert finish is None and [r.version for r in failed] == [2]


@pytest.mark.parametrize("step", [DeployStep.SWAP, DeployStep.DRAIN, DeployStep.STOP_OLD, DeployStep.DONE])
def test_a_rollout_killed_after_its_swap_is_finished(step):
    releases = [_rel(1, ReleaseStatus.ACTIVE, DeployStep.DONE), _rel(2, ReleaseStatus.DEPLOYING, step)]
    finish, failed = interrupted(releases, 1)
    assert finish is not None and finish.version == 2 and failed == []
    # the app was saved but not the release's last step: still finished, nothing failed
    finish, failed = interrupted(releases, 2)
    assert finish is not None and finish.version == 2 and failed == []
    # the first release of an app
    finish, failed = interrupted(releases[1:], None)
    assert finish is not None and finish.version == 2


def test_only_unfinished_releases_newer_than_the_current_one_count():
    releases = [
        _rel(1, ReleaseStatus.SUPERSEDED, DeployStep.DONE),
        _rel(2, ReleaseStatus.PENDING),
        _rel(3, ReleaseStatus.ACTIVE, DeployStep.DONE),
        _rel(4, ReleaseStatus.FAILED, DeployStep.SWAP),
    ]
    finish, failed = interrupted(releases, 3)
    assert finish is None and [r.version for r in failed] == [2]
    # a swapped release older than the current one is not brought back
    finish, failed = interrupted([_rel(2, ReleaseStatus.DEPLOYING, DeployStep.SWAP), releases[2]], 3)
    assert finish is None and [r.version for r in failed] == [2]
