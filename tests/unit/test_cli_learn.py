"""`postwall learn` and the token explanation of `postwall analyze`, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main


def mail(subject: str, body: str, sender: str) -> bytes:
    return (f"From: {sender}\r\nTo: bob@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash((subject, body)))}@x.example>\r\n\r\n{body}\r\n").encode()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "postwall.yml"
    path.write_text(f"local_domains: [example.com]\ndata_dir: {tmp_path / 'data'}\n"
                    "filters: {bayes: {min_spam: 3, min_ham: 3}}\n")
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def corpus(tmp_path: Path) -> tuple[list[str], list[str]]:
    spam, ham = [], []
    for i in range(4):
        path = tmp_path / f"spam{i}.eml"
        path.write_bytes(mail(f"cheap pills {i}", f"buy cheap viagra pills now {i}",
                              "shop@pills.example"))
        spam.append(str(path))
        path = tmp_path / f"ham{i}.eml"
        path.write_bytes(mail(f"project meeting {i}", f"the agenda of our meeting {i}",
                              "alice@partner.example"))
        ham.append(str(path))
    return spam, ham


def test_learn_status_rebuild_and_analyze(config_file: Path, tmp_path: Path) -> None:
    spam, ham = corpus(tmp_path)
    code, output = run("learn", "spam", "--config", str(config_file), *spam)
    assert code == 0, output
    assert output.count("learned as spam") == 4
    code, output = run("learn", "ham", "--config", str(config_file), "--weight", "2", *ham)
    assert code == 0 and output.count("learned as ham") == 4
    code, output = run("learn", "spam", "--config", str(config_file), spam[0])
    assert code == 0 and "already learned as spam" in output
    code, output = run("learn", "ham", "--config", str(config_file), spam[0])
    assert code == 0 and "corrected to ham (was spam)" in output

    code, output = run("learn", "status", "--config", str(config_file))
    assert code == 0
    assert "3 spam, 5 ham (weighted 3 / 9)" in output

    code, output = run("learn", "rebuild", "--config", str(config_file))
    assert code == 0 and "rebuilt from 8 messages (3 spam / 9 ham" in output

    probe = tmp_path / "probe.eml"
    probe.write_bytes(mail("cheap pills", "buy cheap viagra pills", "shop@pills.example"))
    code, output = run("analyze", "--config", str(config_file), str(probe))
    assert code == 0, output
    assert "BAYES_99" in output or "BAYES_999" in output or "BAYES_95" in output
    assert "bayes: p=" in output and "token" in output
    assert "s:cheap" in output or "f:shop@pills.example" in output


def test_learn_refuses_what_it_cannot_learn(config_file: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"\r\n")
    code, output = run("learn", "spam", "--config", str(config_file), str(empty))
    assert code == 1 and "not learned (empty message)" in output
    code, output = run("learn", "spam", "--config", str(config_file), str(tmp_path / "nope"))
    assert code == 2
