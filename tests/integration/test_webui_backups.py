""""Back up now" end to end, up to the systemd path unit: the admin's click writes the
request file, the real `postwall backup` (a process, local directory target) takes it as
it starts and records the run, and the Backups page shows that run and the backups on the
target."""

from __future__ import annotations

import html

import pytest

from appliance.backup.request import request_path
from appliance.backup.state import VERIFIED, read_state
from tests.support.backup_appliance import make_appliance
from tests.support.webui import ADMIN_PASSWORD, UIClient, create_user


@pytest.fixture
def appliance(tmp_path, proxy_factory):  # type: ignore[no-untyped-def]
    yield from make_appliance(tmp_path, proxy_factory)


def test_a_requested_backup_is_consumed_by_the_run_and_shown_on_the_page(appliance):
    from webui import create_app

    app = create_app(appliance.config_path)
    try:
        create_user(app.extensions["postwall"].storage, "admin", ADMIN_PASSWORD, "admin")
        client = UIClient(app)
        assert client.login("admin", ADMIN_PASSWORD).status_code == 302
        assert client.post("/backups/run").status_code == 302
        assert request_path(appliance.data_dir).exists()

        result = appliance.backup()
        assert result.returncode == 0, result.stderr
        assert not request_path(appliance.data_dir).exists()  # one click, one run
        [archive] = appliance.files()
        [run] = read_state(appliance.data_dir).history
        assert (run.result, run.name, run.requested_by) == (VERIFIED, archive.name, "admin")
        assert run.size == archive.stat().st_size
        summary_seconds = float(result.stdout.strip().rsplit(", ", 1)[1].removesuffix(" s"))
        assert abs(run.seconds - summary_seconds) <= 0.06  # the summary line's duration
        [target] = run.targets
        assert target.label == f"directory {appliance.backups}" and target.error is None
        assert [(b.name, b.size) for b in target.backups] == [(archive.name,
                                                                archive.stat().st_size)]

        # A second run without a click (the timer or a shell); its listing is what the
        # target holds after retention (the same day's older backup is pruned).
        assert appliance.backup().returncode == 0
        history = read_state(appliance.data_dir).history
        assert [r.requested_by for r in history] == [None, "admin"]
        kept = [p.name for p in appliance.files()]
        assert [b.name for b in history[0].targets[0].backups] == kept
        assert history[0].name in kept

        text = html.unescape(client.get("/backups").get_data(as_text=True))
        assert 'class="tile state-ok" data-check="backup"' in text
        assert f"<code>{history[0].name}</code>" in text and f"<code>{archive.name}</code>" in text
        assert f"{len(kept)} backup(s) kept" in text
        assert "waiting for the backup service" not in text
        assert text.count("result-verified") == 3  # the last run, and both in the history
    finally:
        app.extensions["postwall"].storage.close()
