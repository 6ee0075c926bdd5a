"""The Backups page: what it shows from the state file (a verified run, a failed run,
none), and "Back up now" as a request file (admin only, CSRF, one request at a time,
audited)."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime, timedelta

import pytest

from appliance.backup import state
from appliance.backup.request import read_request, request_path
from tests.webui.conftest import Appliance, write_config

NAME = "postwall-mx-20240501T023000Z.tar.gz.enc"
SMB = "SMB share \\\\fs.example.com\\Appliance Backups\\postwall (port 445)"


@pytest.fixture
def configured(appliance: Appliance) -> Appliance:
    """The appliance with a backup target (the web UI re-reads the changed base file)."""
    write_config(appliance.config_path, appliance.data_dir, {
        "backup": {"directory": str(appliance.data_dir.parent / "backups"),
                   "encryption_key_file": "/etc/postwall/backup.key"},
    })
    return appliance


def verified_run(at: datetime) -> state.RunRecord:
    kept = [state.StoredBackup("postwall-mx-20240430T023000Z.tar.gz.enc", 3_000_000,
                               "2024-04-30T02:30:00+00:00"),
            state.StoredBackup(NAME, 3_145_728, state.stamp(at))]
    return state.RunRecord(
        started=state.stamp(at), finished=state.stamp(at + timedelta(seconds=75)),
        result=state.VERIFIED, seconds=75.0, name=NAME, size=3_145_728, requested_by="admin",
        targets=[state.TargetRecord("directory /var/backups/postwall", kept),
                 state.TargetRecord(SMB, kept)],
    )


def page(client) -> str:  # type: ignore[no-untyped-def]
    response = client.get("/backups")
    assert response.status_code == 200
    return html.unescape(response.get_data(as_text=True))


def test_a_verified_run_shows_its_details_the_backups_per_target_and_a_green_tile(
        configured, operator):
    state.record_run(configured.data_dir, verified_run(datetime.now(UTC) - timedelta(hours=2)))
    text = page(operator)
    assert 'class="tile state-ok" data-check="backup"' in text
    assert f"{NAME} verified 2.0 h ago" in text  # the dashboard tile's words
    assert "age 2h 00m" in text
    assert "3.0 MiB" in text and "1m 15s" in text and "requested" not in text.lower()
    assert "directory /var/backups/postwall" in text and SMB in text
    assert "2 backup(s) kept" in text and "postwall-mx-20240430T023000Z.tar.gz.enc" in text
    assert "systemctl list-timers postwall-backup.timer" in text
    assert "postwall restore --list" in text and "postwall restore --latest --dry-run" in text
    assert "/etc/postwall/backup.key" not in text  # not even the key's path
    assert 'href="/backups" class="active"' in text, text[text.find("main-nav"):text.find("</nav>")]


def test_a_failed_run_shows_its_reason_and_a_red_tile(configured, operator):
    state.record_run(configured.data_dir, verified_run(datetime.now(UTC) - timedelta(hours=5)))
    state.record_run(configured.data_dir, state.RunRecord(
        started=state.stamp(datetime.now(UTC)), finished=state.stamp(datetime.now(UTC)),
        result=state.FAILED, seconds=3.0,
        error=f"{SMB}: logon as 'backup' refused: wrong user name or password"))
    text = page(operator)
    assert 'class="tile state-fail" data-check="backup"' in text
    assert "failed: " + SMB + ": logon as 'backup' refused" in text
    assert "timer or command line" in text
    assert text.count("result-failed") == 2 and text.count("result-verified") == 1


def test_without_any_run_the_page_says_so(configured, operator):
    text = page(operator)
    assert 'class="tile state-warn" data-check="backup"' in text
    assert "No backup has run yet." in text and "Recent runs" not in text
    assert "Only an administrator can start a backup." in text
    assert "Back up now</button>" not in text


def test_without_a_target_the_page_says_how_to_configure_one(appliance, admin):
    text = page(admin)
    assert 'class="tile state-unknown"' in text and "Backups are not configured" in text
    assert "Back up now</button>" not in text


def test_the_operator_sees_the_page_but_cannot_request_a_backup(configured, operator):
    assert ">Backups</a>" in page(operator)
    response = operator.post("/backups/run")
    assert response.status_code == 403
    assert not request_path(configured.data_dir).exists()
    assert configured.storage.audit.search(action="backup.") == []


def test_the_admin_requests_a_backup_once_and_it_is_audited(configured, admin):
    before = datetime.now(UTC).replace(microsecond=0)
    response = admin.post("/backups/run")
    assert response.status_code == 302 and response.headers["Location"] == "/backups"
    content = json.loads(request_path(configured.data_dir).read_text())
    assert content["by"] == "admin"
    assert datetime.fromisoformat(content["at"]) >= before
    text = page(admin)
    assert "Backup requested" in text
    assert "waiting for the backup service" in text and "Requested by admin at" in text
    assert 'class="primary" disabled>Back up now' in text

    again = admin.post("/backups/run")
    assert again.status_code == 302
    assert "A backup was already requested by admin at" in page(admin)
    [entry] = configured.storage.audit.search(action="backup.")
    assert (entry.username, entry.action, entry.target) == ("admin", "backup.requested", "backup")
    assert entry.client_ip == "192.0.2.10"
    assert read_request(configured.data_dir).by == "admin"  # the first request stands


def test_a_request_without_the_csrf_token_is_refused(configured, admin):
    response = admin.post("/backups/run", csrf=False)
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    assert not request_path(configured.data_dir).exists()
    assert configured.storage.audit.search(action="backup.") == []


def test_a_running_backup_is_shown_while_its_process_lives(configured, operator):
    state.record_start(configured.data_dir, datetime.now(UTC), "admin")  # this process
    assert "A backup is running" in page(operator)
