"""The layout rules of docs/architecture.md: few top-level modules, small files and functions,
one implementation of each shared mechanism."""

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "zhtune"


def _py_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_at_most_12_top_level_modules():
    mods = [p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(mods) <= 12, sorted(mods)


def test_no_file_over_600_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in _py_files()
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long


def test_no_function_over_120_lines():
    long = []
    for p in _py_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 120:
                    long.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long


@pytest.mark.parametrize(
    "name", ["softmax", "find_checkpoint", "resolve_resume", "bf16_supported", "cpu_threads"]
)
def test_one_definition_of_each_shared_mechanism(name):
    found = []
    for p in _py_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == name:
                found.append(str(p.relative_to(SRC)))
    assert len(found) == 1, found


@pytest.mark.parametrize(
    "module, name",
    [
        ("zhtune.finetune", "FinetuneConfig"),
        ("zhtune.llm", "LlmConfig"),
        ("zhtune.pretrain", "PretrainConfig"),
        ("zhtune.training", "run_trainer"),
        ("zhtune.serving", "create_app"),
    ],
)
def test_old_import_paths_still_resolve(module, name):
    assert callable(getattr(importlib.import_module(module), name))
