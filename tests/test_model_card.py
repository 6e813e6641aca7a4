"""The model card every training command writes (``README.md`` with Hugging Face YAML front
matter) and ``zhtune push`` against a mocked hub endpoint on loopback (offline)."""

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import free_port, tiny_encoder
from test_reliability_helpers import run_zhtune
from zhtune.cli import main
from zhtune.errors import ZhtuneError
from zhtune.runs import finish_model_dir, write_manifest
from zhtune.serving.push import push


def front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory) -> Path:
    from conftest import labelled_rows, write_csv

    root = tmp_path_factory.mktemp("card")
    csv = write_csv(root / "train.csv", labelled_rows())
    out = root / "run"
    proc = run_zhtune("baseline", "--train", str(csv), "--out", str(out), "--min-df", "1",
                      "--dev-ratio", "0.2", "--test-ratio", "0.2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def test_training_writes_a_model_card(baseline_run: Path) -> None:
    from huggingface_hub import ModelCard

    meta = front_matter(baseline_run / "README.md")
    metrics = json.loads((baseline_run / "metrics.json").read_text())
    assert meta["language"] == "zh"
    assert meta["pipeline_tag"] == "text-classification"
    assert meta["library_name"] == "zhtune"
    assert meta["datasets"] == ["train.csv"]
    assert meta["metrics"] == ["accuracy", "f1"]
    results = meta["model-index"][0]["results"][0]
    assert results["task"]["type"] == "text-classification"
    measured = {m["type"]: m["value"] for m in results["metrics"]}
    assert measured == {
        "accuracy": round(metrics["accuracy"], 4),
        "f1": round(metrics["macro_f1"], 4),
    }
    body = (baseline_run / "README.md").read_text(encoding="utf-8")
    assert "zhtune baseline --train " in body and "--min-df 1" in body  # the command itself
    card = ModelCard.load(baseline_run / "README.md")  # huggingface_hub parses it
    assert card.data.eval_results[0].metric_value == measured["accuracy"]


def test_base_model_only_when_it_is_a_hub_id(tmp_path: Path) -> None:
    d = tiny_encoder(tmp_path / "hub")
    write_manifest(d, "encoder", ["negative", "positive"], base_model="bert-base-chinese")
    finish_model_dir(d, {"accuracy": 0.5, "macro_f1": 0.25, "n": 4, "split": "test"})
    meta = front_matter(d / "README.md")
    assert meta["base_model"] == "bert-base-chinese" and meta["library_name"] == "transformers"
    local = tiny_encoder(tmp_path / "local")
    write_manifest(local, "encoder", ["negative", "positive"], base_model=str(d))
    finish_model_dir(local, {})
    meta = front_matter(local / "README.md")
    assert "base_model" not in meta and "model-index" not in meta  # a path is not a hub id
    assert str(d) in (local / "README.md").read_text(encoding="utf-8")  # named in the text


# --- zhtune push against a mocked hub ----------------------------------------------------------
@pytest.fixture
def hub() -> Iterator[tuple[str, list[dict]]]:
    """The few hub routes ``upload_folder`` calls, answered on loopback; records each call."""
    import uvicorn
    from fastapi import FastAPI, Request

    app, calls = FastAPI(), []
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    @app.post("/{path:path}")
    async def route(path: str, request: Request) -> dict:
        body = await request.body()
        calls.append({"path": path, "auth": request.headers.get("authorization"), "body": body})
        if path == "api/repos/create":
            return {"url": f"{url}/u/m", "name": "u/m"}
        if path == "api/validate-yaml":
            return {"warnings": []}
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                              for f in files]}  # fmt: skip
        return {"commitUrl": f"{url}/u/m/commit/{'a' * 40}", "commitOid": "a" * 40}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield url, calls
    finally:
        server.should_exit = True
        thread.join(10)


def committed_files(calls: list[dict]) -> dict[str, bytes]:
    commit = next(c for c in calls if "/commit/" in c["path"])
    files = {}
    for line in commit["body"].decode().splitlines():
        item = json.loads(line)
        if item["key"] == "file":
            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
    return files


def test_push_uploads_the_run_directory(baseline_run: Path, hub, capsys) -> None:
    url, calls = hub
    (baseline_run / "checkpoints").mkdir(exist_ok=True)
    (baseline_run / "checkpoints" / "junk.bin").write_bytes(b"x")
    rc = main(["push", str(baseline_run), "--repo-id", "u/m", "--endpoint", url,
               "--token", "hf_test", "--private"])  # fmt: skip
    assert rc == 0
    assert "commit/" in capsys.readouterr().out
    create = json.loads(next(c for c in calls if c["path"] == "api/repos/create")["body"])
    assert (
        create["name"] == "m"
        and create["organization"] == "u"
        and create["visibility"] == "private"
    )
    assert all(c["auth"] == "Bearer hf_test" for c in calls)
    files = committed_files(calls)
    for name in ("README.md", "zhtune.json", "baseline.safetensors", "metrics.json"):
        assert files[name] == (baseline_run / name).read_bytes(), name
    assert not any(f.startswith("checkpoints/") for f in files)


def test_push_refuses_corrupt_weights_before_sending(
    baseline_run: Path, hub, tmp_path, capsys
) -> None:
    import shutil

    url, calls = hub
    d = shutil.copytree(baseline_run, tmp_path / "copy")
    f = d / "baseline.safetensors"
    b = bytearray(f.read_bytes())
    b[-3] ^= 0x10
    f.write_bytes(bytes(b))
    rc = main(["push", str(d), "--repo-id", "u/m", "--endpoint", url, "--token", "t"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "baseline.safetensors: sha256" in err[-1], err
    assert calls == []  # nothing was sent
    with pytest.raises(ZhtuneError, match="not a zhtune run directory"):
        push(tmp_path, "u/m", endpoint=url)
