"""Scheduled jobs on the real engine: lbsolo.toml's [[cron]] entries follow the deploys, cron:add and
its bad input, cron:run passing the exit code, cron.failed and cron.missed to a webhook, history
across daemon restarts, one scheduled run and one missed run (within grace) run once on start.

No test waits for a wall-clock minute: the daemon is restarted with LBSOLO_CRON_CLOCK_OFFSET
putting its scheduler's clock a few seconds before (or minutes after) a job's due time.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime

import pytest

from .conftest import EXAMPLES, running_daemon, webhook_receiver

pytestmark = pytest.mark.docker

TOML_JOB = '\n[[cron]]\nname = "nightly"\nschedule = "0 3 * * *"\ncommand = "echo nightly"\n'
NOON_2027 = datetime(2027, 1, 1, 12, 0, tzinfo=UTC).timestamp()  # the "tick" job's first due time
NOON_2028 = datetime(2028, 1, 1, 12, 0, tzinfo=UTC).timestamp()


def ok(out):
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def runs(daemon, job=None):
    path = "/api/apps/cj/cron-runs" + (f"?job={job}" if job else "")
    r = daemon.api_get(path)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.3)
    raise AssertionError(f"no {what} in {timeout:.0f}s")


def restart_at(daemon, fake_now: float) -> None:
    """Restart the daemon with its scheduler's clock at `fake_now` (give or take its start)."""
    daemon.stop()
    daemon.extra_env["LBSOLO_CRON_CLOCK_OFFSET"] = str(fake_now - time.time())
    daemon.start()


def test_scheduled_jobs(docker_client, tmp_path):
    env = {"LBSOLO_CRON_POLL": "1", "LBSOLO_CRON_GRACE": "600"}
    src = tmp_path / "src"
    shutil.copytree(EXAMPLES / "hello", src)
    toml = (src / "lbsolo.toml").read_text()
    with running_daemon(docker_client, tmp_path / "home", env) as daemon, webhook_receiver() as receiver:
        ok(daemon.cli("apps:create", "cj"))
        ok(daemon.cli("webhooks:add", receiver.url, "--event", "cron.*"))

        # A malformed [[cron]] entry fails the deploy before anything is released, naming the entry.
        (src / "lbsolo.toml").write_text(toml + TOML_JOB + '\n[[cron]]\nschedule = "0 3 * *"\ncommand = "x"\n')
        bad = daemon.cli("deploy", str(src), "--app", "cj")
        assert bad.returncode != 0 and "lbsolo.toml [[cron]] entry 2: invalid schedule" in bad.stdout + bad.stderr
        assert daemon.api_get("/api/apps/cj/releases").json() == []

        # The entries of lbsolo.toml become the app's jobs at the deploy.
        (src / "lbsolo.toml").write_text(toml + TOML_JOB)
        ok(daemon.cli("deploy", str(src), "--app", "cj"))
        listed = ok(daemon.cli("cron", "cj")).stdout
        assert "nightly" in listed and "toml" in listed and "0 3 * * *" in listed

        ok(daemon.cli("cron:add", "cj", "0 12 1 1 *", "--name", "tick", "--", "echo tick from $LBSOLO_APP"))
        ok(daemon.cli("cron:add", "cj", "0 0 1 1 *", "--name", "boom", "--", "echo boom; exit 3"))

        # Bad input: one line each, nothing changed.
        for args, message in [
            (("cron:add", "cj", "61 * * * *", "--", "x"), "invalid schedule"),
            (("cron:add", "cj", "* * * * *", "--", " "), "command cannot be empty"),
            (("cron:add", "nope", "* * * * *", "--", "x"), "unknown app 'nope'"),
            (("cron:remove", "cj", "zzz"), "cj has no job 'zzz'"),
            (("cron:run", "cj", "zzz"), "cj has no job 'zzz'"),
            (("cron:remove", "cj", "nightly"), "comes from cj's lbsolo.toml"),
        ]:
            out = daemon.cli(*args)
            assert out.returncode != 0 and message in out.stderr + out.stdout, (args, out.stdout + out.stderr)
            assert len((out.stderr + out.stdout).strip().splitlines()) == 1, out.stderr
        jobs = daemon.api_get("/api/apps/cj/cron").json()
        assert sorted(j["name"] for j in jobs) == ["boom", "nightly", "tick"]

        # cron:run: now, output streamed, the exit code passed through; cron.failed to the webhook.
        out = daemon.cli("cron:run", "cj", "boom")
        assert out.returncode == 3 and "boom" in out.stdout, out.stdout + out.stderr
        assert ok(daemon.cli("cron:run", "cj", "tick")).stdout.strip() == "tick from cj"
        failed = wait_for(
            lambda: [json.loads(b) for _, b in receiver.received if json.loads(b)["event"] == "cron.failed"],
            15,
            "cron.failed webhook",
        )
        assert failed[0]["app"] == "cj" and "boom" in failed[0]["message"]
        boom_run = runs(daemon, "boom")[0]
        assert (boom_run["trigger"], boom_run["status"], boom_run["exit_code"]) == ("manual", "failed", 3)
        assert ok(daemon.cli("cron:runs:logs", "cj", boom_run["id"])).stdout.strip() == "boom"
        assert "manual" in ok(daemon.cli("cron:runs", "cj")).stdout
        one_offs = docker_client.containers.list(
            all=True, filters={"label": [f"lbsolo.instance={daemon.instance}", "lbsolo.process=one-off"]}
        )
        assert one_offs == []  # removed after each run

        # One scheduled run: the scheduler's clock a few seconds before tick's due time.
        restart_at(daemon, NOON_2027 - 6)
        assert boom_run["id"] in [r["id"] for r in runs(daemon)]  # history survives the restart
        scheduled = wait_for(
            lambda: [r for r in runs(daemon, "tick") if r["trigger"] == "scheduled" and r["status"] != "running"],
            30,
            "scheduled run of tick",
        )
        assert scheduled[0]["status"] == "succeeded" and scheduled[0]["due"] == NOON_2027
        # boom's due time (2027-01-01 00:00) is 12 hours past: beyond grace, reported and not run
        assert [r["status"] for r in runs(daemon, "boom") if r["trigger"] == "missed"] == ["not_run"]

        # A run missed while the daemon was down, within grace: runs once on start, recorded as missed.
        restart_at(daemon, NOON_2028 + 300)
        missed = wait_for(
            lambda: [r for r in runs(daemon, "tick") if r["trigger"] == "missed" and r["status"] != "running"],
            30,
            "missed run of tick",
        )
        assert missed[0]["status"] == "succeeded" and missed[0]["due"] == NOON_2028
        time.sleep(3)
        assert len([r for r in runs(daemon, "tick") if r["trigger"] == "missed"]) == 1
        kinds = [json.loads(b)["event"] for _, b in receiver.received]
        assert "cron.missed" in kinds and "cron.succeeded" in kinds

        # A redeploy without the [[cron]] entry removes its job; cron:remove removes an added one.
        (src / "lbsolo.toml").write_text(toml)
        ok(daemon.cli("deploy", str(src), "--app", "cj"))
        ok(daemon.cli("cron:remove", "cj", "tick"))
        assert [j["name"] for j in daemon.api_get("/api/apps/cj/cron").json()] == ["boom"]
