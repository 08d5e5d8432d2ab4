"""The operator's status page, driven in a real headless Chromium against a real gateway process.

Debian's chromium and chromium-driver are used as installed (`.ci/run` installs them);
nothing is downloaded. How descriptions render is read from the HTML in-process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx2
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from starlette.testclient import TestClient

from conftest import make_settings
from gateway import create_app
from serving import free_port, wait_until_live

FAKE = Path(__file__).parent / "connectors" / "fake.py"
API_KEY = "k3y-for-the-page"
WAIT = 15  # seconds the browser may take to show something


def manifest(commands: str) -> str:
    return f"manifest_version: 1\nconnector: page\ndescription: For the status page.\ncommands:\n{commands}"


ECHO = (
    "  - name: Echo\n"
    "    description: Answers with the payload it read.\n"
    f"    run: ['{{python}}', -I, -S, '{FAKE}', echo]\n"
    "    parameters:\n"
    "      - {id: text, type: str, required: true, description: What to echo.}\n"
    "      - {id: count, type: int, default: 2}\n"
)


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    (tmp_path / "page.yaml").write_text(manifest(ECHO))
    (tmp_path / "broken.yaml").write_text("manifest_version: 1\nconnector: broken\ncommands: nope\n")
    return tmp_path


def serve(manifests: Path, **env: str) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--manifests", str(manifests)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_live(port, process)
        yield port
    finally:
        process.kill()
        process.communicate(timeout=10)


@pytest.fixture
def gateway(manifests: Path) -> Iterator[int]:
    yield from serve(manifests)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium, "the status page tests need Debian's chromium (see .ci/run)"
    assert driver, "the status page tests need Debian's chromium-driver (see .ci/run)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a driver on the internet
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(WAIT)
    try:
        yield chrome
    finally:
        chrome.quit()


def run_from_the_form(browser: webdriver.Chrome, command: str, params: str) -> str:
    Select(browser.find_element(By.ID, "command")).select_by_value(command)
    box = browser.find_element(By.ID, "params")
    box.clear()
    box.send_keys(params)
    browser.find_element(By.CSS_SELECTOR, "#try button[type=submit]").click()
    WebDriverWait(browser, WAIT).until(lambda page: page.find_element(By.ID, "answer").text.strip())
    answer: str = browser.find_element(By.ID, "answer").text
    return answer


def test_the_page_lists_commands_and_failed_manifests(browser: webdriver.Chrome, gateway: int) -> None:
    browser.get(f"http://127.0.0.1:{gateway}/")

    row = browser.find_element(By.CSS_SELECTOR, "tr[data-command='page/Echo']")
    assert "Answers with the payload it read." in row.text
    assert "text (str, required): What to echo." in row.text
    assert "count (int, optional, default 2)" in row.text
    failure = browser.find_element(By.CSS_SELECTOR, "#failures .failure")
    assert "broken.yaml" in failure.text
    assert "commands: 'nope' is not of type 'array'" in failure.text


def test_a_manifest_broken_after_start_up_appears_with_its_problems(
    browser: webdriver.Chrome, gateway: int, manifests: Path
) -> None:
    (manifests / "page.yaml").write_text(manifest(ECHO + "    timeout: soon\n"))

    def broken_on_the_page(page: webdriver.Chrome) -> bool:
        page.get(f"http://127.0.0.1:{gateway}/")
        return "page.yaml" in page.find_element(By.ID, "failures").text

    WebDriverWait(browser, WAIT, poll_frequency=0.3).until(broken_on_the_page)
    failure = next(
        item for item in browser.find_elements(By.CSS_SELECTOR, "#failures .failure") if "page.yaml" in item.text
    )
    assert "commands[0].timeout: 'soon' is not of type 'number'" in failure.text
    assert "Its last good version is still served." in failure.text
    assert browser.find_element(By.CSS_SELECTOR, "tr[data-command='page/Echo']")


def test_the_form_runs_a_command_and_shows_the_envelope(browser: webdriver.Chrome, gateway: int) -> None:
    browser.get(f"http://127.0.0.1:{gateway}/")
    # The form starts from the command's required parameters and defaults.
    assert '"count": 2' in browser.find_element(By.ID, "params").get_attribute("value")

    answer = run_from_the_form(browser, "page/Echo", '{"text": "from the browser"}')

    assert '"text": "from the browser"' in answer
    assert '"command_response_version": 2' in answer
    assert browser.find_element(By.ID, "status").text.startswith("HTTP 200, request id ")
    browser.refresh()
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-command='page/Echo']")
    assert row.find_element(By.CSS_SELECTOR, ".requests").text == "1"
    assert row.find_element(By.CSS_SELECTOR, ".errors").text == "0%"


def test_the_form_shows_a_refusal_too(browser: webdriver.Chrome, gateway: int) -> None:
    browser.get(f"http://127.0.0.1:{gateway}/")

    answer = run_from_the_form(browser, "page/Echo", "{}")

    assert '"error_code": "missing_parameter"' in answer
    assert browser.find_element(By.ID, "status").text.startswith("HTTP 400")


def test_with_an_api_key_the_page_and_its_form_need_it(browser: webdriver.Chrome, manifests: Path) -> None:
    for port in serve(manifests, CONNECTOR_PROXY_API_KEY=API_KEY):
        refused = httpx2.get(f"http://127.0.0.1:{port}/")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic ")

        # A browser signs in with the key as the password; the form's requests then carry it too.
        browser.get(f"http://operator:{API_KEY}@127.0.0.1:{port}/")
        answer = run_from_the_form(browser, "page/Echo", '{"text": "signed in"}')

        assert '"text": "signed in"' in answer
        wrong = httpx2.get(f"http://127.0.0.1:{port}/", auth=("operator", "wrong"))
        assert wrong.status_code == 401


def test_each_command_shows_its_latency_once_it_has_traffic(browser: webdriver.Chrome, gateway: int) -> None:
    browser.get(f"http://127.0.0.1:{gateway}/")
    assert browser.find_element(By.CSS_SELECTOR, "tr[data-command='page/Echo'] .latency").text == "-"

    for payload in ({"text": "one"}, {"text": "two"}, {}):
        httpx2.post(f"http://127.0.0.1:{gateway}/v1/do/page/Echo", json=payload)
    browser.refresh()

    row = browser.find_element(By.CSS_SELECTOR, "tr[data-command='page/Echo']")
    assert row.find_element(By.CSS_SELECTOR, ".requests").text == "3"
    assert row.find_element(By.CSS_SELECTOR, ".errors").text == "33%"
    latency = row.find_element(By.CSS_SELECTOR, ".latency").text
    shown = re.fullmatch(r"(\d+\.\d) ms / (\d+\.\d) ms", latency)
    assert shown, f"p50 / p95 should be two durations in ms, got {latency!r}"
    assert 0 < float(shown[1]) <= float(shown[2])


class References(HTMLParser):
    """Every URL a document refers to, the tags that would load something by themselves, its style and script."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.loading: list[str] = []
        self.inside = ""
        self.text: dict[str, str] = {"style": "", "script": ""}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        self.urls += [found[name] for name in ("href", "src", "action", "srcset", "poster", "data") if name in found]
        if tag in ("link", "img", "iframe", "object", "embed", "video", "audio") or (
            tag == "script" and "src" in found
        ):
            self.loading.append(tag)
        self.inside = tag

    def handle_data(self, data: str) -> None:
        if self.inside in self.text:
            self.text[self.inside] += data

    def handle_endtag(self, tag: str) -> None:
        self.inside = ""


def test_the_page_needs_nothing_from_another_host(browser: webdriver.Chrome, gateway: int) -> None:
    origin = f"http://127.0.0.1:{gateway}"
    page = httpx2.get(f"{origin}/").text
    references = References()
    references.feed(page)

    assert references.loading == []  # no stylesheet, script, image or frame of its own to fetch
    assert "/metrics" in references.urls
    assert all(url.startswith("/") and not url.startswith("//") for url in references.urls), references.urls
    assert not re.search(r"@import|url\(", references.text["style"])
    assert not re.search(r"[\"'`](https?:)?//", references.text["script"])  # the form posts to location.origin

    browser.get(f"{origin}/")
    run_from_the_form(browser, "page/Echo", '{"text": "offline"}')

    loaded = browser.execute_script("return performance.getEntriesByType('resource').map((entry) => entry.name)")
    assert f"{origin}/v1/do/page/Echo" in loaded  # the form's request
    assert all(url.startswith(f"{origin}/") for url in loaded), loaded  # and perhaps the browser's favicon.ico
    sent = [
        event["params"]["request"]["url"]
        for event in (json.loads(entry["message"])["message"] for entry in browser.get_log("performance"))
        if event["method"] == "Network.requestWillBeSent"
    ]
    assert f"{origin}/" in sent
    assert all(url.startswith(f"{origin}/") for url in sent), sent


def test_backquoted_words_in_descriptions_show_as_code(tmp_path: Path) -> None:
    (tmp_path / "quoted.yaml").write_text(
        "manifest_version: 1\nconnector: quoted\ncommands:\n"
        "  - name: Post\n"
        "    description: Sends `data` as the <body>.\n"
        f"    run: ['{{python}}', -I, -S, '{FAKE}', echo]\n"
        "    parameters:\n"
        "      - {id: data, type: any, description: 'Any JSON value; `null` sends none.'}\n"
    )
    with TestClient(create_app(make_settings(manifest_dirs=(tmp_path,)))) as client:
        page = client.get("/").text

    assert "<td>Sends <code>data</code> as the &lt;body&gt;.</td>" in page
    assert "(any, optional): Any JSON value; <code>null</code> sends none.</li>" in page
