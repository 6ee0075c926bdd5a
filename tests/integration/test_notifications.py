"""Notifications end to end: the event happens in a running proxy, the mail arrives at the
recording server (the internal mail server) through the real test Postfix, or through the
fallback smarthost / the spool when Postfix is down."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.config.schema import Config
from appliance.notify import Notifier, notify_event
from appliance.notify.delivery import spooled
from appliance.storage.facade import Storage
from appliance.storage.messagelog import MessageLogEntry
from tests.support.clamd import EICAR, ClamdInstance, clamd_unavailable_reason
from tests.support.dns_server import AuthoritativeDNS
from tests.support.services import REPO_ROOT, free_port, wait_until
from tests.support.smtpclient import send_message

NOTIFICATION = "X-Postwall-Notification"
EVERYTHING = "everything.notify.test"
ZEN = "zen.notify.test"


def notifications(admin: str, **settings: Any) -> dict[str, Any]:
    settings = {"monitor_interval_seconds": 1, "summary_enabled": False, **settings}
    return {"notifications": {"admin_address": admin, **settings}}


def eicar_mail(subject: str) -> bytes:
    return (f"From: <alice@partner.example>\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@partner.example>\r\n\r\n").encode() + EICAR + b"\r\n"


def plain_mail(subject: str) -> bytes:
    return (f"From: <alice@partner.example>\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@partner.example>\r\n\r\nHello.\r\n").encode()


def send(proxy, content: bytes, source: str | None = None):
    host, port = proxy.inbound
    return send_message(host, port, content, mail_from="alice@partner.example",
                        rcpt_tos=["bob@example.com"], source=source)


def mails_to(recorder, admin: str, kind: str | None = None):
    return [m for m in recorder.find(header="To", value=admin)
            if kind is None or (m.header(NOTIFICATION) or "").startswith(kind)]


def wait_mails(recorder, admin: str, kind: str, count: int = 1, timeout: float = 20.0):
    assert wait_until(lambda: len(mails_to(recorder, admin, kind)) >= count, timeout,
                      interval=0.1), (
        f"{count} {kind} notification(s) to {admin} expected; recorded: "
        f"{[(m.header('To'), m.header('Subject')) for m in recorder.messages()]}")
    return mails_to(recorder, admin, kind)


def text_of(mail) -> str:
    return mail.message.get_content()


def run_cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args, "--config", str(config)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )


def write_config(tmp_path: Path, settings: dict[str, Any]) -> Path:
    path = tmp_path / "postwall.yml"
    path.write_text(yaml.safe_dump(settings))
    return path


# -- events in a running proxy ----------------------------------------------------------

requires_clamd = pytest.mark.skipif(clamd_unavailable_reason() is not None,
                                    reason=clamd_unavailable_reason() or "")


@requires_clamd
def test_virus_is_mailed_once_even_with_several_workers(proxy_factory, recorded, clamd):
    admin = "admin-virus@example.com"
    proxy = proxy_factory(
        {"filters": {"clamav": {"mode": "block", "address": clamd.address}},
         **notifications(admin)}, workers=3)
    # SO_REUSEPORT spreads connections from many sources over the workers (once all
    # of them listen): go on until at least two workers have refused a virus.
    for i in range(60):
        assert send(proxy, eicar_mail(f"virus {i}"), f"127.0.0.{10 + i}").final.code == 554
        if i >= 5 and len(virus_pids(proxy)) >= 2:
            break
    assert len(virus_pids(proxy)) >= 2, "the viruses should have reached several workers"
    [mail] = wait_mails(recorded, admin, "virus")
    assert mail.header("Subject").startswith("[Postwall postwall.test] PROBLEM: virus "
                                             "Test.EICAR.UNOFFICIAL refused from 127.0.0.10")
    assert "bob@example.com" in text_of(mail) and "What to do:" in text_of(mail)
    time.sleep(2.0)  # every worker's repeats have had time to be reported
    assert len(mails_to(recorded, admin)) == 1
    assert "counted into its incident" in proxy.stderr_text()


def virus_pids(proxy) -> set[str]:
    return {line.split("[", 1)[1].split("]", 1)[0] for line in proxy.stderr_text().splitlines()
            if "virus Test.EICAR" in line and "tx=" in line}


@requires_clamd
def test_virus_without_admin_address_is_only_logged(proxy_factory, recorded, clamd):
    proxy = proxy_factory({"filters": {"clamav": {"mode": "block", "address": clamd.address}}})
    assert send(proxy, eicar_mail("unannounced virus")).final.code == 554
    assert send(proxy, plain_mail("after the virus")).accepted
    recorded.wait_for_match(header="Subject", value="after the virus")
    time.sleep(1.0)
    assert [m.header("Subject") for m in recorded.messages()] == ["after the virus"]
    assert not (proxy.data_dir / "notify").exists()


def test_suspended_dnsbl_zone_is_mailed(proxy_factory, recorded, dns_server: AuthoritativeDNS):
    dns_server.set_zones({EVERYTHING: ["* IN A 127.0.0.2"], ZEN: ["2.0.0.127 IN A 127.0.0.2"]})
    admin = "admin-dnsbl@example.com"
    proxy = proxy_factory({
        "dns": {"nameservers": [dns_server.nameserver]},
        "filters": {"dnsbl": {"mode": "score", "check_private": True, "zones": [
            {"zone": ZEN, "label": "ZEN", "weight": 2},
            {"zone": EVERYTHING, "label": "ALL", "weight": 9}]}},
        **notifications(admin)}, workers=2)
    for i in range(4):
        assert send(proxy, plain_mail(f"dnsbl {i}"), source="127.0.0.3").accepted
    [mail] = wait_mails(recorded, admin, "dnsbl_suspended")
    assert f"DNS list zone {EVERYTHING} suspended" in mail.header("Subject")
    assert "lists 127.0.0.1, which must never be listed" in text_of(mail)
    time.sleep(1.5)
    assert len(mails_to(recorded, admin, "dnsbl_suspended")) == 1  # both workers, one mail


@requires_clamd
def test_clamd_down_and_back_is_one_problem_and_one_resolved_mail(proxy_factory, recorded):
    admin = "admin-clamd@example.com"
    own = ClamdInstance()
    own.start()
    try:
        proxy = proxy_factory({"filters": {"clamav": {"mode": "block", "address": own.address}},
                               **notifications(admin)})
        own.stop()
        assert send(proxy, plain_mail("while clamd is down")).final.code == 451
        [problem] = wait_mails(recorded, admin, "clamd_down")
        assert "PROBLEM: clamd down" in problem.header("Subject")
        assert "systemctl restart clamav-daemon" in text_of(problem)
        time.sleep(2.5)  # monitor runs while it is still down: counted, not mailed
        assert len(mails_to(recorded, admin, "clamd_down")) == 1
        own.start()
        [resolved] = wait_mails(recorded, admin, "clamd_down; resolved")
        assert "RESOLVED: clamd down" in resolved.header("Subject")
        assert "occurrence(s)" in text_of(resolved)
    finally:
        own.cleanup()


def test_postfix_down_goes_out_through_the_fallback_smarthost(proxy_factory, recorded):
    admin = "admin-postfix@example.com"
    dead = free_port()
    host, port = recorded.host, recorded.port
    proxy = proxy_factory({"downstream": {"port": dead},
                           **notifications(admin, fallback_smarthost=f"{host}:{port}")})
    [mail] = wait_mails(recorded, admin, "postfix_down")
    assert f"Postfix (downstream) down: 127.0.0.1:{dead}" in mail.header("Subject")
    # The recorder got it straight from the proxy, not through Postfix.
    assert "postfix" not in (mail.header("Received") or "").lower()
    assert "notification sent through fallback" in proxy.stderr_text()


def test_postfix_down_without_fallback_is_spooled_and_sent_later(
        proxy_factory, recorded, postfix, tmp_path):
    admin = "admin-spool@example.com"
    proxy = proxy_factory({"downstream": {"port": free_port()}, **notifications(admin)})
    notify_dir = proxy.data_dir / "notify"
    assert wait_until(lambda: len(spooled(notify_dir)) >= 1, 15, interval=0.1)
    assert "notification spooled" in proxy.stderr_text()
    proxy.stop()
    assert mails_to(recorded, admin) == []
    # Postfix is reachable again: the spool is sent by `postwall notify flush`.
    config = write_config(tmp_path, {**proxy.config, "downstream": {"port": postfix.port}})
    result = run_cli("notify", "flush", config=config)
    assert result.returncode == 0, result.stderr
    assert "sent 1, still waiting 0" in result.stdout
    [mail] = wait_mails(recorded, admin, "postfix_down")
    assert "PROBLEM: Postfix (downstream) down" in mail.header("Subject")
    assert spooled(notify_dir) == []


def test_disk_above_the_threshold_is_mailed(proxy_factory, recorded):
    admin = "admin-disk@example.com"
    proxy = proxy_factory(notifications(admin, disk_percent=0.01))
    [mail] = wait_mails(recorded, admin, "disk_full")
    assert "(threshold 0.01%)" in mail.header("Subject")
    assert "of the inodes used" in text_of(mail) and "retention_days" in text_of(mail)
    time.sleep(2.5)
    assert len(mails_to(recorded, admin, "disk_full")) == 1
    assert proxy.is_running


# -- the API for other modules (the backup) and the faults ------------------------------


def config_for(tmp_path: Path, postfix_port: int, **settings: Any) -> Config:
    return Config(data_dir=tmp_path / "data", downstream={"port": postfix_port},
                  smtp={"hostname": "postwall.test"},
                  notifications={"admin_address": "admin-api@example.com", **settings})


def test_notify_event_from_a_command_reaches_the_admin_once(recorded, postfix, tmp_path):
    config = config_for(tmp_path, postfix.port)
    assert notify_event("backup_failed", "//nas/backups", "backup did not verify",
                        "tar: unexpected end of file", config=config) == "postfix"
    assert notify_event("backup_failed", "//nas/backups", "backup did not verify",
                        config=config) == "counted"
    [mail] = wait_mails(recorded, "admin-api@example.com", "backup_failed")
    assert "tar: unexpected end of file" in text_of(mail) and "postwall backup" in text_of(mail)


def test_recorder_down_postfix_queues_the_notification(recorded, recorder, postfix, tmp_path):
    config = config_for(tmp_path, postfix.port)
    with recorder.stopped():
        assert notify_event("disk_full", "/x", "disk full", config=config) == "postfix"
        assert spooled(tmp_path / "data" / "notify") == []
    postfix.flush()
    [mail] = wait_mails(recorded, "admin-api@example.com", "disk_full", timeout=30)
    assert "PROBLEM: disk full" in mail.header("Subject")


def test_nothing_takes_the_mail_it_is_spooled_not_lost(tmp_path):
    config = config_for(tmp_path, free_port(), fallback_smarthost=f"127.0.0.1:{free_port()}",
                        send_timeout=2)
    started = time.monotonic()
    assert notify_event("postfix_down", "x", "Postfix down", config=config) == "spooled"
    assert time.monotonic() - started < 5
    [path] = spooled(tmp_path / "data" / "notify")
    assert path.stat().st_size > 0


def test_notify_test_command(recorded, postfix, tmp_path):
    settings = config_for(tmp_path, postfix.port).model_dump(mode="json")
    config = write_config(tmp_path, settings)
    result = run_cli("notify", "test", config=config)
    assert result.returncode == 0, result.stderr
    assert "sent to admin-api@example.com through postfix" in result.stdout
    [mail] = wait_mails(recorded, "admin-api@example.com", "test")
    assert "test notification" in mail.header("Subject")


def test_notify_test_without_admin_address_is_a_clear_error(tmp_path):
    config = write_config(tmp_path, {"data_dir": str(tmp_path / "data")})
    result = run_cli("notify", "test", config=config)
    assert result.returncode == 1
    assert "notifications.admin_address is not set" in result.stderr


# -- the daily summary --------------------------------------------------------------------


def seed_log(data_dir: Path) -> None:
    now = datetime.now(UTC)
    rows = []
    for i, (action, sender, ip, symbols) in enumerate([
        ("reject", "spammer@bad.example", "198.51.100.7", [("DNSBL_ZEN_SBL", 6.0, "listed")]),
        ("reject", "spammer@bad.example", "198.51.100.7", [("DNSBL_ZEN_SBL", 6.0, "listed")]),
        ("quarantine", "promo@shop.example", "203.0.113.9", [("BAYES_SPAM", 4.0, "p=0.99")]),
        ("deliver", "friend@partner.example", "192.0.2.1", []),
        ("deliver", "friend@partner.example", "192.0.2.1", []),
        ("deliver", "friend@partner.example", "192.0.2.1", []),
        ("tag", "news@list.example", "192.0.2.50", [("BAYES_SPAM", 4.0, "p=0.9")]),
    ]):
        rows.append(MessageLogEntry(
            id=f"sum{i}", time=now - timedelta(minutes=10 + i), listener="inbound",
            client_ip=ip, helo="h", sender=sender, recipients=["bob@example.com"],
            subject=f"s{i}", size=100, symbols=symbols, total=sum(s[1] for s in symbols),
            action=action, reply="250", downstream_reply=None, duration_ms=1.0))
    rows.append(MessageLogEntry(  # older than a day: not in the summary
        id="old", time=now - timedelta(days=2), listener="inbound", client_ip="192.0.2.99",
        helo="h", sender="old@old.example", recipients=["bob@example.com"], subject="old",
        size=1, symbols=[], total=0, action="reject", reply="550", downstream_reply=None,
        duration_ms=1.0))
    storage = Storage.open(data_dir)
    try:
        storage.messagelog.record_many(rows)
    finally:
        storage.close()


def test_summary_print_and_mail(recorded, postfix, tmp_path):
    settings = config_for(tmp_path, postfix.port).model_dump(mode="json")
    config = write_config(tmp_path, settings)
    seed_log(tmp_path / "data")
    result = run_cli("notify", "summary", "--print", config=config)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Messages: 7" in text
    assert "  deliver            3   42.9%" in text and "  reject             2" in text
    blocked = text.split("Most blocked senders:")[1].split("\n\n")[0]
    assert blocked.split("\n")[1:] == ["       2  spammer@bad.example",
                                       "       1  promo@shop.example"]
    assert "friend@partner.example" not in text and "old@old.example" not in text
    assert "       2  198.51.100.7" in text
    assert "       2  DNSBL_ZEN_SBL (12)" in text and "       2  BAYES_SPAM (8)" in text
    assert "not scoring yet: it needs 50 more spam and 50 more ham" in text
    result = run_cli("notify", "summary", config=config)
    assert result.returncode == 0, result.stderr
    [mail] = wait_mails(recorded, "admin-api@example.com", "summary")
    assert "daily summary" in mail.header("Subject") and "Messages: 7" in text_of(mail)


def test_summary_is_due_once_a_day_across_processes(tmp_path):
    config = Config(data_dir=tmp_path, notifications={"admin_address": "a@example.com",
                                                      "summary_hour": 6})
    morning = datetime(2026, 11, 25, 5, 59, tzinfo=UTC)
    assert not Notifier(config).summary_due(morning)
    later = morning + timedelta(minutes=2)
    assert Notifier(config).summary_due(later)
    assert not Notifier(config).summary_due(later + timedelta(hours=3))  # another process
    assert Notifier(config).summary_due(later + timedelta(days=1))


def test_running_proxy_mails_the_daily_summary_once(proxy_factory, recorded):
    admin = "admin-daily@example.com"
    proxy = proxy_factory(notifications(admin, summary_enabled=True, summary_hour=0),
                          workers=2)
    assert send(proxy, plain_mail("counted in the summary")).accepted
    [mail] = wait_mails(recorded, admin, "summary")
    assert "daily summary" in mail.header("Subject")
    assert "Classifier training:" in text_of(mail)
    time.sleep(2.5)
    assert len(mails_to(recorded, admin, "summary")) == 1


def test_damaged_spool_file_is_set_aside_and_the_rest_is_sent(recorded, postfix, tmp_path,
                                                              caplog):
    dead = config_for(tmp_path, free_port())
    assert notify_event("disk_full", "/a", "spooled while down", config=dead) == "spooled"
    spool = tmp_path / "data" / "notify" / "spool"
    (spool / "0-garbage.json").write_text("{not json")
    from appliance.notify.delivery import retry_spool

    alive = config_for(tmp_path, postfix.port)
    assert retry_spool(alive, tmp_path / "data" / "notify") == (1, 0)
    assert "unreadable, moved aside" in caplog.text
    assert (spool / "0-garbage.bad").exists()
    [mail] = wait_mails(recorded, "admin-api@example.com", "disk_full")
    assert "spooled while down" in mail.header("Subject")


def test_a_failed_backup_mails_the_administrator_once(recorded, postfix, tmp_path):
    admin = "admin-backup@example.com"
    (tmp_path / "a-file").write_text("not a directory\n")
    missing = tmp_path / "a-file" / "backups"  # cannot be created: its parent is a file
    config = write_config(tmp_path, {
        "data_dir": str(tmp_path / "data"), "downstream": {"port": postfix.port},
        "smtp": {"hostname": "postwall.test"},
        "notifications": {"admin_address": admin},
        "backup": {"directory": str(missing)},
    })
    for _ in range(2):
        result = run_cli("backup", config=config)
        assert result.returncode != 0 and str(missing) in result.stderr
    [mail] = wait_mails(recorded, admin, "backup_failed")
    assert str(missing) in text_of(mail)
    time.sleep(1.0)
    assert len(mails_to(recorded, admin, "backup_failed")) == 1  # the second is counted
