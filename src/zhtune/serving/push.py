"""``zhtune push RUN --repo-id OWNER/NAME``: upload a run directory to a Hugging Face hub.

The directory goes up as is (weights, tokenizer, ``zhtune.json``, the model card
``README.md``, metrics and figures); ``checkpoints/``, hidden and temp files stay behind.
Before anything is sent, the weight files are checked against the sha256 digests in
``zhtune.json`` (a corrupt copy is never published) and a missing model card is written.
Token: ``--token``, else ``HF_TOKEN`` or the ``huggingface-cli login`` cache; ``--endpoint``
(or ``HF_ENDPOINT``) for a private hub.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from zhtune.errors import ZhtuneError
from zhtune.runs import CARD, read_manifest, verify_weights, write_model_card

IGNORE = ["checkpoints/**", ".*", "**/.*", "*.tmp", "*.lock", "*.pid"]


def prepare_push(run: str | Path) -> Path:
    """Check ``run`` is a zhtune run directory with intact weights; write its model card when
    missing. Returns the directory."""
    path = Path(run)
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None:
        raise ZhtuneError(f"{run}: not a zhtune run directory (no zhtune.json)")
    verify_weights(path, manifest)
    if not (path / CARD).is_file():
        metrics_file = path / "metrics.json"
        metrics = json.loads(metrics_file.read_text("utf-8")) if metrics_file.is_file() else {}
        write_model_card(path, manifest, metrics)
    return path


def push(
    run: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
    message: str | None = None,
) -> str:
    """Create the repo (if needed) and upload ``run`` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    path = prepare_push(run)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(path),
            repo_type="model",
            revision=revision,
            commit_message=message or f"zhtune push {path.name}",
            ignore_patterns=IGNORE,
        )
    except HFValidationError as e:
        raise ZhtuneError(f"--repo-id {repo_id!r}: {e}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZhtuneError(f"push to {repo_id} failed (HTTP {status}): {first}") from None
    except OSError as e:  # network unreachable, DNS
        raise ZhtuneError(f"push to {repo_id} failed: {e}") from None
    return str(getattr(info, "commit_url", info))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory to upload (written by a training command)")
    p.add_argument("--repo-id", required=True, help="hub repository, OWNER/NAME")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument(
        "--token", help="hub token (default: HF_TOKEN or the huggingface-cli login cache)"
    )
    p.add_argument("--endpoint", help="hub URL (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument("--message", help="commit message (default: 'zhtune push RUN')")


def run_cli(ns: argparse.Namespace) -> int:
    url = push(
        ns.run,
        ns.repo_id,
        private=ns.private,
        token=ns.token or os.environ.get("HF_TOKEN") or None,
        endpoint=ns.endpoint,
        revision=ns.revision,
        message=ns.message,
    )
    print(f"pushed {ns.run} to {ns.repo_id}: {url}")
    return 0
