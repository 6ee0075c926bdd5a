"""The web UI end to end in a real browser: Debian's Chromium driven by Selenium through
Debian's chromedriver (nothing is downloaded), against `postwall webui serve` over HTTPS,
a real proxy, the test Postfix and the recording server.

An administrator created with `postwall webui init-admin` logs in with the one-time
password, must choose a new one, lowers a threshold and sees the next message get the new
action, releases a quarantined message and sees it arrive at the internal server.
Screenshots of the main pages go to artifacts/webui/ (POSTWALL_ARTIFACTS overrides).
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_webui_live import RULES, logged_action, message, send
from tests.support.services import wait_until
from tests.support.smtpclient import SMTPClient
from tests.support.webui import WebUIProcess, chromium_available

ARTIFACTS = Path(os.environ.get(
    "POSTWALL_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts")) / "webui"
NEW_PASSWORD = "a long new admin passphrase"

pytestmark = pytest.mark.skipif(chromium_available() is not None,
                                reason=chromium_available() or "")


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1000", "--lang=en-US"):
        options.add_argument(argument)
    options.accept_insecure_certs = True  # the throwaway self-signed certificate
    # An explicit chromedriver path: Selenium Manager never runs, nothing is downloaded.
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    """The whole page, not only the window, as a PNG artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    })
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def wait_text(driver: Any, text: str, timeout: float = 15.0) -> None:
    from selenium.common.exceptions import WebDriverException

    def present() -> bool:
        try:
            return text in driver.find_element("tag name", "body").text
        except WebDriverException:  # the page was replaced while we read it: look again
            return False

    if not wait_until(present, timeout, interval=0.1):
        raise AssertionError(f"{text!r} not on {driver.current_url}:\n"
                             f"{driver.find_element('tag name', 'body').text[:3000]}")


def fill(driver: Any, name: str, value: str) -> None:
    field = driver.find_element("name", name)
    field.clear()
    field.send_keys(value)


def click(driver: Any, selector: str) -> None:
    driver.find_element("css selector", selector).click()


def test_administrator_day_in_the_browser(proxy_factory: Any, recorded: Any,
                                          browser: Any) -> None:
    proxy = proxy_factory(RULES)
    webui = WebUIProcess(proxy.config_path, proxy.base_dir)
    # The first administrator: a one-time password in an owner-only file, no default.
    password_file = proxy.base_dir / "admin-password"
    subprocess.run([sys.executable, "-m", "appliance", "webui", "init-admin", "--config",
                    str(proxy.config_path), "--password-file", str(password_file)],
                   check=True, capture_output=True)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    one_time = password_file.read_text().strip()
    webui.start()
    try:
        run_the_day(proxy, webui, recorded, browser, one_time)
    except Exception:
        screenshot(browser, "failure")
        print(webui.log_text()[-4000:])
        raise
    finally:
        webui.stop()


def run_the_day(proxy: Any, webui: WebUIProcess, recorded: Any, driver: Any,
                one_time: str) -> None:
    from webui.state import UIState

    storage = UIState.open(proxy.config_path).storage
    base = webui.url

    # -- log in; the one-time password must be changed first ---------------------------
    driver.get(base + "/")
    assert driver.current_url.startswith(base + "/login")
    screenshot(driver, "01-login")
    fill(driver, "username", "admin")
    fill(driver, "password", "wrong password")
    click(driver, "button.primary")
    wait_text(driver, "Wrong user name or password")
    fill(driver, "username", "admin")
    fill(driver, "password", one_time)
    click(driver, "button.primary")
    wait_text(driver, "choose your own now")
    assert driver.current_url == base + "/account/password"
    fill(driver, "current", one_time)
    fill(driver, "new", NEW_PASSWORD)
    fill(driver, "confirm", NEW_PASSWORD)
    click(driver, "button.primary")
    wait_text(driver, "Password changed.")
    cookie = driver.get_cookie("__Host-postwall")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # -- the dashboard sees the running proxy and Postfix ---------------------------------
    assert send(proxy, message("meeting one")).accepted
    assert logged_action(storage, "meeting one") == "deliver"
    driver.get(base + "/")
    wait_text(driver, "1 worker(s)")
    tiles = {t.get_attribute("data-check"): t.get_attribute("class")
             for t in driver.find_elements("css selector", ".tile")}
    assert "state-ok" in tiles["proxy"] and "state-ok" in tiles["postfix"]
    screenshot(driver, "02-dashboard")

    # -- lower the tag threshold: the next message is tagged ------------------------------
    driver.get(base + "/config/scoring.thresholds")
    fill(driver, "scoring.thresholds.tag", "2")
    click(driver, "form.settings button.primary")
    wait_text(driver, "Applied: 1 worker(s) reloaded without dropping connections.")
    screenshot(driver, "03-configuration")
    assert send(proxy, message("meeting two")).accepted
    [tagged] = recorded.wait_for_match(header="Subject", value="meeting two")
    assert tagged.header("Subject") == "[SPAM] meeting two"
    assert logged_action(storage, "meeting two") == "tag"
    driver.get(base + "/log")
    wait_text(driver, "meeting two")
    rows = driver.find_elements("css selector", "table.log tbody tr.row-tagged")
    assert rows, "the tagged message is not coloured as tagged"
    screenshot(driver, "04-message-log")
    rows[0].find_element("css selector", "a").click()
    wait_text(driver, "BOMB_SUBJECT")
    screenshot(driver, "05-message-detail")

    # -- a quarantined message, released once ------------------------------------------------
    recorded.clear()
    assert send(proxy, message("lottery win"), sender="promo@lotto.example").accepted
    assert logged_action(storage, "lottery win") == "quarantine"
    recorded.assert_no_messages(within=0.5)
    driver.get(base + "/quarantine")
    wait_text(driver, "lottery win")
    screenshot(driver, "06-quarantine")
    driver.find_element("link text", "lottery win").click()
    wait_text(driver, "Hello Bob.")
    screenshot(driver, "07-quarantined-message")
    click(driver, "#release")
    wait_text(driver, "Released to bob@example.com")
    [released] = recorded.wait_for(1)
    assert released.header("Subject") == "lottery win"
    assert released.header("X-Postwall-Released").startswith("by admin at ")
    assert not driver.find_elements("css selector", "#release")  # once

    # -- lists, analyzer, live connections, users, audit ---------------------------------------
    driver.get(base + "/lists/blacklist")
    fill(driver, "value", "@lotto.example")
    fill(driver, "comment", "lottery spam")
    click(driver, "form[action$='/add'] button.primary")
    wait_text(driver, "@lotto.example is on the blacklist")
    screenshot(driver, "08-lists")
    driver.get(base + "/analyzer")
    fill(driver, "message", "From: promo@lotto.example\nTo: bob@example.com\n"
                            "Subject: lottery results\n\nYou won!\n")
    click(driver, "form button.primary")
    wait_text(driver, "BLACKLISTED")
    screenshot(driver, "09-analyzer")
    driver.get(base + "/connections")
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo("slow.sender.example")
        smtp.mail("slow@sender.example")
        wait_text(driver, "slow.sender.example", timeout=10)  # the page refreshes itself
        screenshot(driver, "10-connections")
    driver.get(base + "/users")
    screenshot(driver, "11-users")
    driver.get(base + "/audit")
    wait_text(driver, "quarantine.release")
    wait_text(driver, "scoring.thresholds.tag")
    screenshot(driver, "12-audit")
    storage.close()
