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
from contextlib import contextmanager
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


@contextmanager
def served(model: Path, log_dir: Path) -> Iterator[str]:
    """``zhtune serve --model MODEL`` on a free port until the block ends; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (log_dir / "serve.log").open("w")
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
def server_url(tmp_path_factory) -> Iterator[str]:
    model = tiny_encoder(tmp_path_factory.mktemp("model"), labels=LABELS)
    with served(model, tmp_path_factory.mktemp("log")) as url:
        yield url


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


def _classify_in_page(browser, url: str, texts: list[str], explain: bool) -> list:
    """Open the page, type ``texts``, set the explain toggle, click; the result cards."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(EC.text_to_be_present_in_element((By.ID, "model"), "标签"))
    browser.find_element(By.ID, "input").send_keys("\n".join(texts))
    toggle = browser.find_element(By.ID, "explain")
    if toggle.is_selected() != explain:
        toggle.click()
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == len(texts))
    if explain:  # every card's characters, once its explanation arrived
        wait.until(
            lambda d: all(
                c.find_elements(By.CSS_SELECTOR, ".explain .legend")
                for c in d.find_elements(By.CSS_SELECTOR, ".result")
            )
        )
    return browser.find_elements(By.CSS_SELECTOR, ".result")


def _check_colours(url: str, card, text: str) -> None:
    """Each character of ``text`` is one span whose colour follows /v1/explain's score of
    its word: green for support, red against, the strongest word the most opaque."""
    from selenium.webdriver.common.by import By

    ex = httpx.post(url + "/v1/explain", json={"text": text}, timeout=60).json()
    spans = card.find_elements(By.CSS_SELECTOR, ".explain .ch")
    assert "".join(s.text for s in spans) == text.replace(" ", "")
    want = [0.0] * len(text)
    for a in ex["attributions"]:
        for k in range(a["start"], a["end"]):
            want[k] = a["score"]
    scores = [float(s.get_attribute("data-score")) for s in spans]
    assert scores == pytest.approx(want, abs=1e-9)
    colours = [s.value_of_css_property("background-color") for s in spans]
    top = max(range(len(want)), key=lambda k: abs(want[k]))
    for k, (score, colour) in enumerate(zip(want, colours, strict=True)):
        if score > 0:
            assert colour.startswith("rgba(22, 163, 74"), (k, colour)
        elif score < 0:
            assert colour.startswith("rgba(220, 38, 38"), (k, colour)
    assert colours[top].endswith(", 0.8)")  # the strongest word: full strength
    assert len({c for c in colours}) > 2  # several strengths, not one flat colour
    assert ex["label"] in card.find_element(By.CSS_SELECTOR, ".explain .legend").text


def test_explain_toggle_colours_characters(server_url: str, browser) -> None:
    from selenium.webdriver.common.by import By

    texts = ["质量很好，物流也快，非常满意！", "完全不能用，太失望了。"]
    cards = _classify_in_page(browser, server_url, texts, explain=True)
    for text, card in zip(texts, cards, strict=True):
        _check_colours(server_url, card, text)
    if os.environ.get("ZHTUNE_SCREENSHOT_DIR"):
        browser.save_screenshot(str(Path(os.environ["ZHTUNE_SCREENSHOT_DIR"]) / "web_explain.png"))
    # toggle off: no explanation, no /v1/explain request
    cards = _classify_in_page(browser, server_url, texts[:1], explain=False)
    assert not cards[0].find_elements(By.CSS_SELECTOR, ".explain")


@pytest.fixture(scope="module")
def multi_label_url(tmp_path_factory) -> Iterator[str]:
    from conftest import write_csv
    from test_multilabel import toy_rows
    from zhtune.cli import main

    d = tmp_path_factory.mktemp("multi")
    train = write_csv(d / "train.csv", toy_rows(126))
    args = ["baseline", "--train", str(train), "--multi-label", "true", "--min-df", "1"]
    assert main([*args, "--dev-ratio", "0.2", "--test-ratio", "0.2", "--out", str(d / "run")]) == 0
    with served(d / "run", d) as url:
        yield url


def test_multi_label_result_shows_several_labels(multi_label_url: str, browser) -> None:
    from selenium.webdriver.common.by import By

    texts = ["听说苹果香蕉，下雨刮风大家", "早上堵车地铁"]
    cards = _classify_in_page(browser, multi_label_url, texts, explain=True)
    api = httpx.post(multi_label_url + "/v1/classify", json={"texts": texts}).json()["results"]
    for card, res in zip(cards, api, strict=True):
        chips = card.find_elements(By.CSS_SELECTOR, ".chip.label-name")
        names = [c.text.split()[0] for c in chips]
        assert sorted(names) == sorted(res["labels"])
        for chip, name in zip(chips, names, strict=True):  # each with its own probability
            assert chip.text.endswith(f"{res['probs'][name] * 100:.1f}%")
        assert "独立" in card.find_element(By.CSS_SELECTOR, ".label").text
        bars = card.find_elements(By.CSS_SELECTOR, ".prob")
        assert len(bars) == 3  # every label, with its independent probability
        chosen = card.find_elements(By.CSS_SELECTOR, ".prob.top")
        assert sorted(b.text.split()[0] for b in chosen) == sorted(res["labels"])
    first = cards[0].find_elements(By.CSS_SELECTOR, ".chip.label-name")
    assert len(first) >= 2  # 水果 and 天气
    widths = [
        float(b.get_attribute("style").split("width:")[1].split("%")[0])
        for b in cards[0].find_elements(By.CSS_SELECTOR, ".fill")
    ]
    assert sum(widths) > 120  # independent probabilities do not add up to 100%
    _check_colours(multi_label_url, cards[0], texts[0])  # occlusion on TF-IDF
    if os.environ.get("ZHTUNE_SCREENSHOT_DIR"):
        shot = Path(os.environ["ZHTUNE_SCREENSHOT_DIR"]) / "web_multi_label.png"
        browser.save_screenshot(str(shot))
