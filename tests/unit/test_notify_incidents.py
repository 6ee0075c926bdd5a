"""The incident rate limit: one problem is one mail, repeats are counted, resolution once."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from appliance.config.schema import Config
from appliance.notify import incidents
from appliance.notify.incidents import IncidentFile, State
from appliance.notify.notifier import Notifier, body_of

INTERVAL = 600.0
QUIET = 3600.0


def report(state: State, kind: str, key: str, now: float) -> incidents.Mail | None:
    return incidents.report(state, kind, key, f"{kind} {key}", "detail", now=now,
                            interval=INTERVAL)


def test_first_report_opens_and_mails_repeats_are_counted() -> None:
    state = State()
    mail = report(state, "clamd_down", "/run/clamd.ctl", 100.0)
    assert mail is not None and mail.state == "problem" and mail.count == 1
    for t in range(101, 110):
        assert report(state, "clamd_down", "/run/clamd.ctl", float(t)) is None
    incident = state.incidents[incidents.incident_id("clamd_down", "/run/clamd.ctl")]
    assert incident.count == 10 and incident.last_seen == 109.0


def test_resolution_is_mailed_once_with_the_count() -> None:
    state = State()
    report(state, "postfix_down", "127.0.0.1:125", 0.0)
    report(state, "postfix_down", "127.0.0.1:125", 5.0)
    mail = incidents.resolve(state, "postfix_down", "127.0.0.1:125", now=65.0)
    assert mail is not None and mail.state == "resolved" and mail.count == 2
    assert incidents.resolve(state, "postfix_down", "127.0.0.1:125", now=70.0) is None
    # A resolution does not hold back the next problem beyond the interval.
    assert report(state, "postfix_down", "127.0.0.1:125", 70.0) is None  # interval
    assert incidents.due(state, now=600.0, interval=INTERVAL, quiet=QUIET)


def test_resolving_what_never_opened_sends_nothing() -> None:
    assert incidents.resolve(State(), "clamd_down", "x", now=1.0) is None


def test_interval_per_kind_holds_new_incidents_and_due_mails_them_together() -> None:
    state = State()
    assert report(state, "dnsbl_suspended", "a.test", 0.0) is not None
    assert report(state, "dnsbl_suspended", "b.test", 10.0) is None
    assert report(state, "dnsbl_suspended", "c.test", 20.0) is None
    # Another kind is not held back by this one.
    assert report(state, "disk_full", "/var/lib/postwall", 30.0) is not None
    assert incidents.due(state, now=500.0, interval=INTERVAL, quiet=QUIET) == []
    mails = incidents.due(state, now=600.0, interval=INTERVAL, quiet=QUIET)
    assert len(mails) == 1
    assert mails[0].key == "b.test, c.test" and mails[0].summary.startswith("2 incidents")
    assert incidents.due(state, now=2000.0, interval=INTERVAL, quiet=QUIET) == []


def test_resolved_before_it_was_mailed_is_never_mailed() -> None:
    state = State()
    report(state, "clamd_down", "a", 0.0)
    report(state, "clamd_down", "b", 1.0)  # held back by the interval
    assert incidents.resolve(state, "clamd_down", "b", now=2.0) is None
    assert incidents.due(state, now=700.0, interval=INTERVAL, quiet=QUIET) == []


def test_one_off_events_close_after_the_quiet_time() -> None:
    state = State()
    assert report(state, "virus", "Eicar", 0.0) is not None
    assert report(state, "virus", "Eicar", 100.0) is None
    assert incidents.due(state, now=100.0 + QUIET - 1, interval=INTERVAL, quiet=QUIET) == []
    closed = incidents.due(state, now=100.0 + QUIET, interval=INTERVAL, quiet=QUIET)
    assert [(m.state, m.count) for m in closed] == [("closed", 2)]
    assert state.incidents == {}
    # A single virus closes silently: its one mail was enough.
    report(state, "virus", "Other", 10_000.0)
    assert incidents.due(state, now=10_000.0 + QUIET, interval=INTERVAL, quiet=QUIET) == []


def test_a_clock_set_back_does_not_silence_a_kind() -> None:
    state = State(last_sent={"disk_full": 5000.0})
    assert report(state, "disk_full", "/", 100.0) is not None


def test_state_round_trips_through_json() -> None:
    state = State()
    report(state, "virus", "Eicar", 1.0)
    state.summary_day = "2026-01-02"
    again = State.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state


def test_damaged_state_file_starts_afresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    book = IncidentFile(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    book.path.write_text("{not json")
    with book.locked() as state:
        assert state == State()
        report(state, "virus", "x", 1.0)
    assert "unreadable" in caplog.text
    with book.locked() as state:
        assert len(state.incidents) == 1


def _report_many(directory: str, n: int, queue: multiprocessing.Queue) -> None:
    book = IncidentFile(Path(directory))
    sent = 0
    for i in range(n):
        with book.locked() as state:
            if report(state, "clamd_down", "sock", float(i)) is not None:
                sent += 1
    queue.put(sent)


def test_processes_sharing_the_file_open_one_incident(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [context.Process(target=_report_many, args=(str(tmp_path), 50, queue))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    assert sum(queue.get(timeout=5) for _ in procs) == 1
    with IncidentFile(tmp_path).locked() as state:
        assert state.incidents[incidents.incident_id("clamd_down", "sock")].count == 200


def test_without_admin_address_events_are_only_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(Config(data_dir=tmp_path))
    assert notifier.event("clamd_down", ("clamd", "/sock"), "clamd down") == "logged"
    assert "no notifications.admin_address: logged only" in caplog.text
    assert not (tmp_path / "notify").exists()


def test_bad_kind_is_refused(tmp_path: Path) -> None:
    notifier = Notifier(Config(data_dir=tmp_path,
                               notifications={"admin_address": "admin@example.com"}))
    with pytest.raises(ValueError, match="bad notification kind"):
        notifier.event("Clamd Down!", "x", "y")


def test_body_says_what_to_do_and_strips_control_characters() -> None:
    mail = incidents.Mail("clamd_down", "/sock", "problem", "clamd down", "refused", 1, 0.0, 0.0)
    text = body_of(mail, "mx.example.com")
    assert "What to do: " in text and "clamav-daemon" in text
    notifier_subject = Notifier(Config(notifications={"admin_address": "a@example.com"}))
    assert "\n" not in notifier_subject._subject("evil\r\nBcc: x@example.com")


@pytest.mark.parametrize("value", ["admin", "a@b@", "two@example.com, x@example.com",
                                   "a@exa mple.com"])
def test_admin_address_must_be_one_address(value: str) -> None:
    with pytest.raises(ValueError, match="admin_address"):
        Config(notifications={"admin_address": value})


@pytest.mark.parametrize("value", ["nohost", "host:0", "host:99999", ":25", "bad_name:25"])
def test_fallback_smarthost_must_be_host_and_port(value: str) -> None:
    with pytest.raises(ValueError, match="fallback_smarthost"):
        Config(notifications={"fallback_smarthost": value})
