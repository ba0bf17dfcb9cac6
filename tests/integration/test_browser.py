"""A real browser: headless Chromium (Debian's chromium + chromium-driver) against `listfilter web`.

The server is the real command (waitress) on a loopback port; the store is
seeded SQLite. The browser runs with JavaScript switched off, to show that
the page works without it. Screenshots go to tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from listfilter.sync import config as C
from listfilter.store import database as ST

from ..conftest import COURSE_LISTS, REPO
from ..store.test_database import CSV_ROSTER, event
from ..admin.test_app import HASH, PASSWORD, SEED, WEB, seed

CHROMIUM = os.environ.get("LISTFILTER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LISTFILTER_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = REPO / "tests" / "artifacts"

#: The badge colours the issue asks for, as the browser computes them.
COLOURS = {
    "delivered": "rgba(30, 125, 50, 1)",   # green
    "bounced": "rgba(199, 124, 0, 1)",     # amber
    "rejected": "rgba(107, 114, 120, 1)",  # grey
    "failed": "rgba(198, 40, 40, 1)",      # red
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(make_config, tmp_path):
    """`listfilter web --bind 127.0.0.1:PORT` over a seeded store; yields the base URL."""
    path = make_config(COURSE_LISTS + WEB.replace("page_size = 3", "page_size = 4"), roster=CSV_ROSTER)
    config = C.load(path)
    with ST.open_store(config.store, create=True) as s:
        s.upgrade()
        seed(s)
    port = free_port()
    log = (tmp_path / "web.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "listfilter", "--config", str(path), "web",
                             "--bind", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"listfilter web did not start: {(tmp_path / 'web.log').read_text()}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    served = (tmp_path / "web.log").read_text()
    assert "serving http://127.0.0.1:" in served and "Traceback" not in served, served


@pytest.fixture
def browser(tmp_path):
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            pytest.fail(f"{path} is required: apt-get install {package} (tests/run installs it)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_browser_login_badges_filters_and_row_expansion(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    ARTIFACTS.mkdir(exist_ok=True)
    b = browser

    def wait_url(test):
        """A click that submits a form or follows a link: wait for the new page."""
        WebDriverWait(b, 15).until(lambda d: test(d.current_url) and d.find_elements(By.TAG_NAME, "main"))
    b.get(server + "/email")
    assert b.current_url.startswith(server + "/login?next=")  # not signed in: the login form
    b.find_element(By.ID, "username").send_keys("instructor@example.edu")
    b.find_element(By.ID, "password").send_keys(PASSWORD)
    b.find_element(By.ID, "login").click()
    wait_url(lambda u: u == server + "/email")
    assert b.find_element(By.ID, "total").text == f"{len(SEED)} messages"

    # newest first, four per page; every status has its colour
    rows = b.find_elements(By.CSS_SELECTOR, "details.row")
    assert [r.get_attribute("id") for r in rows] == [f"m-{event(n)['id']}" for n in (4, 3, 2, 1)]
    seen = {}
    for badge in b.find_elements(By.CSS_SELECTOR, "details.row .badge"):
        seen[badge.text] = badge.value_of_css_property("background-color")
    assert seen == {s: COLOURS[s] for s in ("delivered", "failed", "rejected", "bounced")}
    b.save_screenshot(str(ARTIFACTS / "email-list.png"))

    # a row opens in place (no JavaScript): recipients and body, HTML shown as text
    row = b.find_element(By.ID, f"m-{event(4)['id']}")
    body = row.find_element(By.CSS_SELECTOR, "pre.body")
    assert not body.is_displayed()
    row.find_element(By.TAG_NAME, "summary").click()
    assert row.get_attribute("open") is not None and body.is_displayed()
    recipients = [li.text for li in row.find_elements(By.CSS_SELECTOR, "ul.recipients li")]
    assert recipients == ["alice@example.edu", "bob@example.edu"]
    assert body.text == "<script>alert('body')</script>\n<b>bold</b>"
    subject = row.find_element(By.CSS_SELECTOR, "summary .subject").text
    assert subject == "<img src=x onerror=alert(1)> X-Injected: yes"
    b.save_screenshot(str(ARTIFACTS / "email-row-open.png"))

    # filters: by status, then by list
    Select(b.find_element(By.ID, "filter-status")).select_by_value("failed")
    b.find_element(By.ID, "filter-apply").click()
    wait_url(lambda u: "status=failed" in u)
    assert [e.text for e in b.find_elements(By.CSS_SELECTOR, "details.row .badge")] == ["failed"]
    Select(b.find_element(By.ID, "filter-status")).select_by_value("")
    Select(b.find_element(By.ID, "filter-list")).select_by_value("staff@lists.example.edu")
    b.find_element(By.ID, "filter-apply").click()
    wait_url(lambda u: "list=staff%40lists.example.edu" in u)
    assert [e.text for e in b.find_elements(By.CSS_SELECTOR, "details.row .badge")] == ["rejected"]
    b.save_screenshot(str(ARTIFACTS / "email-filtered.png"))

    # pagination, and the permalink of the oldest message
    b.get(server + "/email")
    b.find_element(By.CSS_SELECTOR, "a[rel=next]").click()
    wait_url(lambda u: "page=2" in u)
    [last] = b.find_elements(By.CSS_SELECTOR, "details.row")
    assert last.get_attribute("id") == f"m-{event(0)['id']}"
    last.find_element(By.TAG_NAME, "summary").click()
    last.find_element(By.CSS_SELECTOR, "a.permalink").click()
    wait_url(lambda u: u == f"{server}/email/{event(0)['id']}")
    assert "Body of message 0" in b.find_element(By.CSS_SELECTOR, "pre.body").text
    b.save_screenshot(str(ARTIFACTS / "email-permalink.png"))

    # sign out: the data is gone, and so is the session on the server
    kept = b.get_cookie("listfilter_session")
    assert kept["httpOnly"] and kept["sameSite"] == "Lax"
    b.find_element(By.CSS_SELECTOR, "header .who button").click()
    wait_url(lambda u: "/login" in u)
    b.get(server + "/email")
    wait_url(lambda u: "/login" in u)
    assert "Message" not in b.page_source
    assert HASH not in b.page_source
    b.delete_all_cookies()
    b.add_cookie({k: kept[k] for k in ("name", "value", "path")})  # the cookie as it was before signing out
    b.get(server + "/email")
    wait_url(lambda u: "/login" in u)
    assert "Message" not in b.page_source
