"""Preview apps' pure decisions (lbsolo/previews.py): the four providers' pull request payloads,
Bitbucket's push, names under the length limit, what config a preview gets, what each event does
under the caps. No sockets, no engine."""

from __future__ import annotations

import pytest

from lbsolo.errors import InvalidInput
from lbsolo.models import validate_app_name
from lbsolo.previews import (
    MAX_PR_NUMBER,
    MAX_RECORDS,
    Action,
    PreviewRecord,
    PreviewSettings,
    PreviewStatus,
    Provider,
    PullRequest,
    Step,
    bitbucket_push,
    decide,
    event_of,
    is_pull_request_event,
    parse_pull_request,
    preview_config,
    preview_formation,
    preview_names,
    provider_of,
    same_repository,
    trim_records,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
FORK_SHA = "fedcba9876543210fedcba9876543210fedcba98"


# ---- payloads of the four providers, shaped as each sends them --------------------------------


def github(action: str, number: int = 7, fork: bool = False, merged: bool = False) -> dict:
    owner = "mallory" if fork else "acme"
    head_repo = {"full_name": f"{owner}/shop", "fork": fork, "clone_url": f"https://github.com/{owner}/shop.git"}
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number, "merged": merged,
            "head": {"sha": SHA, "ref": "feature", "repo": head_repo},
            "base": {"sha": FORK_SHA, "ref": "main", "repo": {"full_name": "acme/shop", "fork": False}},
        },
        "repository": {"full_name": "acme/shop", "clone_url": "https://github.com/acme/shop.git"},
    }  # fmt: skip


def gitlab(action: str, iid: int = 7, fork: bool = False, oldrev: str | None = None) -> dict:
    attrs = {"iid": iid, "action": action, "source_project_id": 99 if fork else 1, "target_project_id": 1,
             "last_commit": {"id": SHA}, "source": {"git_http_url": "https://gitlab.com/mallory/shop.git"}}  # fmt: skip
    if oldrev:
        attrs["oldrev"] = oldrev
    return {"object_kind": "merge_request", "project": {"path_with_namespace": "acme/shop"}, "object_attributes": attrs}


def bitbucket(number: int = 7, fork: bool = False) -> dict:
    return {
        "pullrequest": {
            "id": number, "state": "OPEN",
            "source": {"commit": {"hash": SHA[:12]}, "branch": {"name": "feature"},
                       "repository": {"full_name": "mallory/shop" if fork else "acme/shop"}},
            "destination": {"branch": {"name": "main"}, "repository": {"full_name": "acme/shop"}},
        },
        "repository": {"full_name": "acme/shop"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "provider", "event"),
    [
        ({"x-github-event": "pull_request"}, Provider.GITHUB, "pull_request"),
        ({"x-gitea-event": "pull_request", "x-github-event": "pull_request"}, Provider.GITEA, "pull_request"),
        ({"x-gitlab-event": "Merge Request Hook"}, Provider.GITLAB, "merge request hook"),
        ({"x-event-key": "pullrequest:created"}, Provider.BITBUCKET, "pullrequest:created"),
    ],
)
def test_the_provider_and_event_come_from_the_headers(headers, provider, event):
    assert provider_of(headers) is provider and event_of(headers) == event and is_pull_request_event(headers)


def test_pushes_and_other_events_are_not_pull_requests():
    for headers in ({"x-github-event": "push"}, {"x-event-key": "repo:push"}, {"x-gitlab-event": "Push Hook"}, {}):
        assert not is_pull_request_event(headers)
    assert provider_of({}) is None


@pytest.mark.parametrize(
    ("action", "expected"), [("opened", Action.OPEN), ("reopened", Action.OPEN), ("synchronize", Action.SYNC),
                             ("closed", Action.CLOSE)],
)  # fmt: skip
def test_github_pull_requests(action, expected):
    pr = parse_pull_request(Provider.GITHUB, "pull_request", github(action))
    assert pr == PullRequest(Provider.GITHUB, expected, 7, SHA, "refs/pull/7/head", "acme/shop", False, False)


def test_gitea_says_synchronized_and_uses_the_same_pull_ref():
    pr = parse_pull_request(Provider.GITEA, "pull_request", github("synchronized", 3))
    assert isinstance(pr, PullRequest) and pr.action is Action.SYNC and pr.ref == "refs/pull/3/head"


def test_a_fork_pull_request_is_still_fetched_from_the_connected_repositorys_pull_ref():
    for provider in (Provider.GITHUB, Provider.GITEA):
        pr = parse_pull_request(provider, "pull_request", github("opened", fork=True))
        assert isinstance(pr, PullRequest) and pr.fork and pr.ref == "refs/pull/7/head"
        assert "mallory" not in pr.ref and pr.repository == "acme/shop"
    pr = parse_pull_request(Provider.GITLAB, "merge request hook", gitlab("open", fork=True))
    assert isinstance(pr, PullRequest) and pr.fork and pr.ref == "refs/merge-requests/7/head"
    pr = parse_pull_request(Provider.BITBUCKET, "pullrequest:created", bitbucket(fork=True))
    assert isinstance(pr, PullRequest) and pr.fork and pr.ref == SHA[:12]  # a commit, fetched from the connected one


def test_merged_and_closed_both_close():
    pr = parse_pull_request(Provider.GITHUB, "pull_request", github("closed", merged=True))
    assert isinstance(pr, PullRequest) and pr.action is Action.CLOSE and pr.merged
    for action in ("close", "merge"):
        pr = parse_pull_request(Provider.GITLAB, "merge request hook", gitlab(action))
        assert isinstance(pr, PullRequest) and pr.action is Action.CLOSE and pr.merged == (action == "merge")
    for event in ("pullrequest:fulfilled", "pullrequest:rejected"):
        pr = parse_pull_request(Provider.BITBUCKET, event, bitbucket())
        assert isinstance(pr, PullRequest) and pr.action is Action.CLOSE


def test_gitlab_merge_requests():
    pr = parse_pull_request(Provider.GITLAB, "merge request hook", gitlab("open", 12))
    assert pr == PullRequest(Provider.GITLAB, Action.OPEN, 12, SHA, "refs/merge-requests/12/head", "acme/shop", False)
    pr = parse_pull_request(Provider.GITLAB, "merge request hook", gitlab("update", oldrev=FORK_SHA))
    assert isinstance(pr, PullRequest) and pr.action is Action.SYNC
    # an update without new commits (a title, a label) asks for nothing
    assert isinstance(parse_pull_request(Provider.GITLAB, "merge request hook", gitlab("update")), str)
    assert isinstance(parse_pull_request(Provider.GITLAB, "merge request hook", {"object_kind": "note"}), str)


def test_bitbucket_pull_requests():
    pr = parse_pull_request(Provider.BITBUCKET, "pullrequest:created", bitbucket(9))
    assert pr == PullRequest(Provider.BITBUCKET, Action.OPEN, 9, SHA[:12], SHA[:12], "acme/shop", False)
    pr = parse_pull_request(Provider.BITBUCKET, "pullrequest:updated", bitbucket(9))
    assert isinstance(pr, PullRequest) and pr.action is Action.SYNC
    assert isinstance(parse_pull_request(Provider.BITBUCKET, "pullrequest:comment_created", bitbucket()), str)
    no_commit = bitbucket()
    no_commit["pullrequest"]["source"]["commit"] = {"hash": "--upload-pack=x"}
    with pytest.raises(InvalidInput, match="no source commit"):
        parse_pull_request(Provider.BITBUCKET, "pullrequest:created", no_commit)


@pytest.mark.parametrize("action", ["labeled", "edited", "assigned", "review_requested", ""])
def test_other_actions_ask_for_nothing(action):
    assert isinstance(parse_pull_request(Provider.GITHUB, "pull_request", github(action)), str)


@pytest.mark.parametrize("number", [0, -1, MAX_PR_NUMBER + 1, 10**30, "7", 7.0, True, None, [7]])
def test_absurd_numbers_are_refused(number):
    for provider, payload in (
        (Provider.GITHUB, {**github("opened"), "number": number}),
        (Provider.GITLAB, gitlab("open", iid=number)),  # type: ignore[arg-type]
        (Provider.BITBUCKET, bitbucket(number)),  # type: ignore[arg-type]
    ):
        if provider is Provider.GITHUB:
            payload["pull_request"].pop("number")
        with pytest.raises(InvalidInput, match="absurd pull request number"):
            parse_pull_request(provider, "pullrequest:created", payload)


@pytest.mark.parametrize("payload", [[], "x", 7, None])
def test_a_body_that_is_no_object_is_refused(payload):
    with pytest.raises(InvalidInput):
        parse_pull_request(Provider.GITHUB, "pull_request", payload)


def test_a_head_that_is_no_commit_is_not_kept():
    payload = github("opened")
    payload["pull_request"]["head"]["sha"] = "$(touch /tmp/x)"
    pr = parse_pull_request(Provider.GITHUB, "pull_request", payload)
    assert isinstance(pr, PullRequest) and pr.head == "" and pr.ref == "refs/pull/7/head"


def test_bitbucket_pushes():
    payload = {"push": {"changes": [
        {"new": {"type": "tag", "name": "v1", "target": {"hash": SHA}}},
        {"new": {"type": "branch", "name": "main", "target": {"hash": SHA}}, "old": {"type": "branch"}},
    ]}}  # fmt: skip
    assert bitbucket_push(payload) == ("main", SHA)
    assert bitbucket_push({"push": {"changes": [{"new": None, "old": {"type": "branch", "name": "x"}}]}}) is None
    assert bitbucket_push({"push": {"changes": "nope"}}) is None and bitbucket_push([]) is None


@pytest.mark.parametrize(
    ("url", "name", "same"),
    [
        ("https://github.com/acme/shop.git", "acme/shop", True),
        ("https://github.com/Acme/Shop", "acme/shop", True),
        ("git@github.com:acme/shop.git", "acme/shop", True),
        ("ssh://git@gitlab.example.com:2222/group/sub/shop.git", "group/sub/shop", True),
        ("https://git.example.com/gitlab/group/shop.git", "group/shop", True),
        ("/srv/git/acme/shop.git", "acme/shop", True),
        ("https://github.com/acme/shop.git", "mallory/shop", False),
        ("https://github.com/acme/shop.git", "shop", False),
        ("https://github.com/acme/myshop.git", "acme/shop", False),
        ("https://github.com/acme/shop.git", "", False),
    ],
)
def test_same_repository(url, name, same):
    assert same_repository(url, name) is same


# ---- names ------------------------------------------------------------------------------------


def test_a_short_app_gets_app_pr_n_then_hashed_names():
    names = preview_names("shop", 7)
    assert names[0] == "shop-pr-7" and len(names) == 6 and len(set(names)) == 6
    assert all(n.endswith("-pr-7") and n.startswith("shop-") for n in names)


@pytest.mark.parametrize("app", ["a" * 30, "a" * 29 + "b", "abcdefghijklmnopqrstuvwxyz-abc", "x-" + "y" * 28])
@pytest.mark.parametrize("number", [1, 42, MAX_PR_NUMBER])
def test_long_names_are_shortened_with_a_hash_and_stay_valid(app, number):
    names = preview_names(app, number)
    for name in names:
        assert len(name) <= 30 and validate_app_name(name) == name and name.endswith(f"-pr-{number}")
    assert f"{app}-pr-{number}" not in names
    assert preview_names(app, number) == names  # stable: the same pull request gets the same name
    assert preview_names(app, max(1, number - 1) if number > 1 else 2)[0] != names[0]


def test_two_long_apps_sharing_a_prefix_get_different_names():
    a, b = "x" * 25 + "alpha", "x" * 25 + "bravo"
    assert not set(preview_names(a, 1)) & set(preview_names(b, 1))


# ---- config, formation ------------------------------------------------------------------------


def test_secrets_and_add_on_urls_are_left_out_unless_allowed():
    config = {"GREETING": "hi", "STRIPE_KEY": "sk", "API_TOKEN": "t", "DATABASE_URL": "postgres://...", "PLAIN": "p"}
    marked = ["STRIPE_KEY", "DATABASE_URL"]
    kept, secret, left = preview_config(config, marked, ["DATABASE_URL"], with_secrets=False)
    assert kept == {"GREETING": "hi", "PLAIN": "p"} and secret == []
    assert left == ["API_TOKEN", "DATABASE_URL", "STRIPE_KEY"]
    kept, secret, left = preview_config(config, marked, ["DATABASE_URL"], with_secrets=True)
    assert kept == {"API_TOKEN": "t", "GREETING": "hi", "PLAIN": "p", "STRIPE_KEY": "sk"}
    assert secret == ["API_TOKEN", "STRIPE_KEY"] and left == ["DATABASE_URL"]  # never the parent's database


def test_a_preview_runs_one_replica_of_each_process():
    assert preview_formation({"web": 4, "worker": 2, "clock": 0}) == {"web": 1, "worker": 1, "clock": 0}


# ---- decisions --------------------------------------------------------------------------------


def pr(action: Action, number: int = 7, head: str = SHA) -> PullRequest:
    return PullRequest(Provider.GITHUB, action, number, head, f"refs/pull/{number}/head", "acme/shop", False)


ON = PreviewSettings(enabled=True, max=2)


def test_settings_are_off_by_default_and_the_cap_is_checked():
    assert PreviewSettings() == PreviewSettings(False, False, False, 3)
    for bad in (0, 51, -1, True):
        with pytest.raises(InvalidInput, match="cap"):
            PreviewSettings(max=bad)
    assert PreviewSettings.from_dict(ON.to_dict()) == ON


def test_an_open_makes_a_preview_unless_off_or_capped():
    assert decide("shop", ON, None, pr(Action.OPEN), 0, 0, 10).step is Step.CREATE
    off = decide("shop", PreviewSettings(), None, pr(Action.OPEN), 0, 0, 10)
    assert off.step is Step.IGNORE and "previews:settings shop --enable" in off.reason
    here = decide("shop", ON, None, pr(Action.OPEN), 2, 2, 10)
    assert here.step is Step.REFUSE and "--max" in here.reason and "#7" in here.reason
    everywhere = decide("shop", ON, None, pr(Action.OPEN), 1, 10, 10)
    assert everywhere.step is Step.REFUSE and "LBSOLO_MAX_PREVIEWS" in everywhere.reason


def test_a_push_updates_a_preview_and_retries_a_refused_or_failed_one():
    running = PreviewRecord(7, PreviewStatus.RUNNING, app="shop-pr-7", head="a" * 40)
    assert decide("shop", ON, running, pr(Action.SYNC), 1, 1, 10).step is Step.UPDATE
    assert decide("shop", ON, running, pr(Action.SYNC, head="a" * 40), 1, 1, 10).step is Step.IGNORE
    assert decide("shop", ON, running, pr(Action.OPEN), 2, 2, 10).step is Step.UPDATE  # a reopen: no new slot
    for status in (PreviewStatus.REFUSED, PreviewStatus.FAILED):
        record = PreviewRecord(7, status)
        assert decide("shop", ON, record, pr(Action.SYNC), 1, 1, 10).step is Step.CREATE
        assert decide("shop", ON, record, pr(Action.SYNC), 2, 2, 10).step is Step.REFUSE
    assert decide("shop", ON, None, pr(Action.SYNC), 0, 0, 10).step is Step.CREATE  # opened before previews were on


def test_a_close_removes_whatever_there_is_and_nothing_is_no_error():
    nothing = decide("shop", ON, None, pr(Action.CLOSE), 0, 0, 10)
    assert nothing.step is Step.IGNORE and "nothing to remove" in nothing.reason
    for status in PreviewStatus:
        record = PreviewRecord(7, status, app="shop-pr-7")
        assert decide("shop", PreviewSettings(), record, pr(Action.CLOSE), 1, 1, 10).step is Step.DESTROY


def test_records_are_bounded_and_active_ones_stay():
    records = {n: PreviewRecord(n, PreviewStatus.REFUSED, updated_at=n) for n in range(1, MAX_RECORDS + 6)}
    records[1] = PreviewRecord(1, PreviewStatus.RUNNING, updated_at=0)
    kept = trim_records(records)
    assert len(kept) == MAX_RECORDS and 1 in kept and 2 not in kept and MAX_RECORDS + 5 in kept
    assert PreviewRecord.from_dict(records[1].to_dict()) == records[1]
