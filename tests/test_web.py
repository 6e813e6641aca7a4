"""The served web page, driven in headless Chromium: type texts, click, see labels and bars."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import tiny_encoder

CHROMEDRIVER = "/usr/bin/chromedriver"
LABELS = ["负面", "正面"]  # Chinese label names, as a user's data would have

pytestmark = [
    pytest.mark.slow,  # a server and a browser start
    pytest.mark.skipif(
        not (Path(CHROMEDRIVER).exists() and shutil.which("chromium")),
        reason="needs Debian chromium + chromium-driver (make browser)",
    ),
]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> Iterator[str]:
    model = tiny_encoder(tmp_path_factory.mktemp("model"), labels=LABELS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path_factory.mktemp("log") / "serve.log").open("w")
    cmd = [sys.executable, "-m", "zhtune", "serve", "--model", str(model), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--threads", "1"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"server did not start: {Path(log.name).read_text()}")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1000,900",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_classifies_several_texts(server_url: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server_url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(EC.text_to_be_present_in_element((By.ID, "model"), "标签"))
    texts = ["质量很好，物流也快，非常满意！", "完全不能用，太失望了。", "<b>不是HTML</b>"]
    box = browser.find_element(By.ID, "input")
    box.send_keys("\n".join(texts))
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == len(texts))
    cards = browser.find_elements(By.CSS_SELECTOR, ".result")
    for text, card in zip(texts, cards, strict=True):
        assert card.find_element(By.CSS_SELECTOR, ".text").text == text  # shown as text
        assert card.find_element(By.CSS_SELECTOR, ".label-name").text in LABELS
        bars = card.find_elements(By.CSS_SELECTOR, ".fill")
        assert len(bars) == len(LABELS)
        widths = [float(b.get_attribute("style").split("width:")[1].split("%")[0]) for b in bars]
        assert abs(sum(widths) - 100) < 0.5
    assert not browser.find_elements(By.CSS_SELECTOR, ".result b")  # no HTML injection
    shot = tmp_path / "web_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 5000
    if os.environ.get("ZHTUNE_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["ZHTUNE_SCREENSHOT_DIR"]) / shot.name)


def test_page_shows_errors(server_url: str, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server_url + "/")
    browser.find_element(By.ID, "go").click()  # nothing typed
    assert browser.find_element(By.ID, "error").text == "请输入文本"
    box = browser.find_element(By.ID, "input")
    browser.execute_script("arguments[0].value = arguments[1];", box, "\n".join(["好"] * 70))
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(lambda d: "413" in d.find_element(By.ID, "error").text)
