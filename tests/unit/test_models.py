import pytest

from lbsolo.errors import InvalidInput
from lbsolo.models import validate_app_name


@pytest.mark.parametrize("name", ["hello", "a", "my-app-2", "x" * 30])
def test_valid_names(name):
    assert validate_app_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Hello", "1app", "-app", "app-", "my_app", "a.b", "x" * 31, "a--b", "api", "lbsolo", "app name", "ü"],
)
def test_invalid_names(name):
    with pytest.raises(InvalidInput, match="invalid app name"):
        validate_app_name(name)


def test_push_payloads_of_github_gitlab_and_gitea():
    import hashlib
    import hmac
    import json

    from lbsolo.api.git import push_from_payload
    from lbsolo.errors import Unauthorized

    body = json.dumps({"ref": "refs/heads/main", "after": "abc123", "repository": {"clone_url": "https://x/r.git"}})
    raw = body.encode()
    sig = hmac.new(b"s3", raw, hashlib.sha256).hexdigest()
    github = {"x-github-event": "push", "x-hub-signature-256": "sha256=" + sig}
    assert push_from_payload(github, raw, "s3") == ("https://x/r.git", "main", "abc123")
    assert push_from_payload({"x-gitea-event": "push", "x-gitea-signature": sig}, raw, "s3")[1] == "main"
    gitlab = json.dumps({"ref": "refs/heads/dev", "checkout_sha": "f00", "project": {"git_http_url": "http://g/p.git"}})
    assert push_from_payload({"x-gitlab-event": "Push Hook", "x-gitlab-token": "s3"}, gitlab.encode(), "s3") == (
        "http://g/p.git",
        "dev",
        "f00",
    )
    assert push_from_payload({"x-github-event": "ping", "x-hub-signature-256": "sha256=" + sig}, raw, "s3") is None
    with pytest.raises(Unauthorized):
        push_from_payload({"x-github-event": "push", "x-hub-signature-256": "sha256=00"}, raw, "s3")
    with pytest.raises(Unauthorized):
        push_from_payload({"x-gitlab-token": "wrong"}, raw, "s3")


def test_address_list_settings_are_checked_and_name_the_setting():
    from lbsolo.config import networks

    parsed = networks(" 10.0.0.1, 192.168.0.0/16 ,,::1", "trusted_proxies")
    assert parsed == ("10.0.0.1/32", "192.168.0.0/16", "::1/128")
    assert networks("", "dns_allow") == ()
    with pytest.raises(InvalidInput, match=r"LBSOLO_TRUSTED_PROXIES: '10.0.0.300' is not an IP address or network"):
        networks("10.0.0.1,10.0.0.300", "trusted_proxies")
