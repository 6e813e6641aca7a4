"""Clients people already have, against a live ``zhtune serve`` on loopback: the real
``huggingface_hub.InferenceClient`` (``POST /``) and Text Embeddings Inference's ``POST
/predict`` request/response shapes (examples from TEI's OpenAPI document)."""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import tiny_encoder
from test_serve import Server

KEY = "compat-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = ["质量很好，物流也快", "太失望了", "一般般吧"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("compat")
    model = tiny_encoder(root / "model", labels=["negative", "neutral", "positive"])
    srv = Server(model, root / "serve.log", "--api-key", KEY, "--max-chars", "50")
    try:
        srv.wait_ready(timeout=300)  # a shared, busy machine: loading can take minutes
        yield srv
    finally:
        srv.stop()


def reference(server: Server, texts: list[str]) -> list[dict[str, float]]:
    r = httpx.post(server.url + "/v1/classify", json={"texts": texts}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return [res["probs"] for res in r.json()["results"]]


def test_inference_client_text_classification(server: Server) -> None:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    client = InferenceClient(base_url=server.url, api_key=KEY)
    for text, probs in zip(TEXTS, reference(server, TEXTS), strict=True):
        out = client.text_classification(text)
        assert [o.label for o in out] == sorted(probs, key=lambda k: -probs[k])
        for o in out:
            assert o.score == pytest.approx(probs[o.label], abs=1e-6)
        assert sum(o.score for o in out) == pytest.approx(1.0, abs=1e-5)
        top = client.text_classification(text, top_k=1)
        assert [(t.label, t.score) for t in top] == [(out[0].label, out[0].score)]
        raw = client.text_classification(text, function_to_apply="none")
        assert [math.exp(o.score) for o in raw] == pytest.approx([o.score for o in out], 1e-5)
        assert client.text_classification(text, function_to_apply="softmax") == out
    with pytest.raises(HfHubHTTPError) as e:
        InferenceClient(base_url=server.url).text_classification(TEXTS[0])  # no key
    assert e.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as e:
        client.text_classification(TEXTS[0], function_to_apply="sigmoid")
    assert e.value.response.status_code == 422  # single-label models: softmax or none
    assert "function_to_apply" in e.value.response.json()["error"]["message"]


def test_hf_route_shapes_and_limits(server: Server) -> None:
    url = server.url + "/"
    r = httpx.post(url, json={"inputs": TEXTS[:2]}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body) == 2 and all(len(row) == 3 for row in body)
    for row, probs in zip(body, reference(server, TEXTS[:2]), strict=True):
        assert {d["label"]: d["score"] for d in row} == pytest.approx(probs, abs=1e-6)
    for bad, code in [
        ({"inputs": "好" * 51}, "text_too_long"),
        ({"inputs": "   "}, "empty_text"),
        ({"inputs": "好", "parameters": {"top_k": 0}}, "invalid_request"),
        ({"inputs": "好", "parameters": {"topk": 1}}, "invalid_request"),
        ({"inputs": 3}, "invalid_request"),
    ]:
        r = httpx.post(url, json=bad, headers=AUTH, timeout=30)
        assert (r.status_code, r.json()["error"]["code"]) == (422, code), (bad, r.text)
    page = httpx.get(url, headers=AUTH, timeout=30)  # the web page stays at GET /
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_tei_predict_examples(server: Server) -> None:
    url = server.url + "/predict"
    probs = reference(server, ["What is Deep Learning?", *TEXTS])
    # TEI's OpenAPI example request: one string -> one list of predictions, best first
    r = httpx.post(
        url,
        json={"inputs": "What is Deep Learning?", "raw_scores": False, "truncate": False},
        headers=AUTH,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    preds = r.json()
    assert set(preds[0]) == {"label", "score"}
    assert [p["label"] for p in preds] == sorted(probs[0], key=lambda k: -probs[0][k])
    assert {p["label"]: p["score"] for p in preds} == pytest.approx(probs[0], abs=1e-6)
    # a batch, in TEI's [[text], ...] form and as a plain list -> one list per text
    for inputs in ([[t] for t in TEXTS], TEXTS):
        r = httpx.post(url, json={"inputs": inputs}, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        rows = r.json()
        assert len(rows) == len(TEXTS)
        for row, p in zip(rows, probs[1:], strict=True):
            assert {d["label"]: d["score"] for d in row} == pytest.approx(p, abs=1e-6)
    raw = httpx.post(url, json={"inputs": TEXTS[0], "raw_scores": True}, headers=AUTH).json()
    assert {d["label"]: math.exp(d["score"]) for d in raw} == pytest.approx(probs[1], rel=1e-5)


def test_tei_truncate_and_errors(server: Server) -> None:
    url = server.url + "/predict"
    long = "好" * 40 + "差" * 40
    r = httpx.post(url, json={"inputs": long}, headers=AUTH, timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "text_too_long")
    right = httpx.post(url, json={"inputs": long, "truncate": True}, headers=AUTH).json()
    left = httpx.post(
        url, json={"inputs": long, "truncate": True, "truncation_direction": "left"}, headers=AUTH
    ).json()
    p_right, p_left = reference(server, [long[:50], long[-50:]])
    assert {d["label"]: d["score"] for d in right} == pytest.approx(p_right, abs=1e-6)
    assert {d["label"]: d["score"] for d in left} == pytest.approx(p_left, abs=1e-6)
    r = httpx.post(url, json={"inputs": [["问题", "回答"]]}, headers=AUTH, timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "unsupported_input")
    r = httpx.post(url, json={"inputs": ["好"] * 65}, headers=AUTH, timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "too_many_texts")
    assert httpx.post(url, json={"inputs": "好"}, timeout=30).status_code == 401
    assert "Traceback" not in Path(server.log).read_text()


# --- /docs renders offline (headless Chromium, every host but loopback unresolvable) --------
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.mark.slow  # a browser starts
@pytest.mark.skipif(
    not (Path(CHROMEDRIVER).exists() and shutil.which("chromium")),
    reason="needs Debian chromium + chromium-driver (make browser)",
)
def test_docs_render_offline_in_chromium(server: Server, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    html = httpx.get(server.url + "/docs", headers=AUTH, timeout=30).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/docs/static/") for a in assets), assets
    opts = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1100,1400", "--proxy-server=http://127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"X-API-Key": KEY}})
        with pytest.raises(WebDriverException, match="ERR_"):  # the network really is blocked
            driver.get("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css")
        driver.get(server.url + "/docs")
        WebDriverWait(driver, 60).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")) >= 5
        )
        paths = {
            e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
        }
        assert {"/v1/classify", "/", "/predict", "/health", "/metrics"} <= paths, paths
        assert "zhtune classifier" in driver.find_element(By.CSS_SELECTOR, ".title").text
        shot = tmp_path / "docs_offline.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 5000
        if os.environ.get("ZHTUNE_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["ZHTUNE_SCREENSHOT_DIR"]) / shot.name)
    finally:
        driver.quit()
