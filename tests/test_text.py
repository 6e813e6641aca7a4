from zhtune.text import builtin_vocab_path, load_tokenizer, word_ids, word_starts


def test_builtin_tokenizer_uses_the_chinese_bert_vocab():
    tok = load_tokenizer()
    assert len(tok) == 21128
    lines = builtin_vocab_path().read_text(encoding="utf-8").rstrip("\n").split("\n")
    assert len(lines) == 21128 and lines[2769] == "我"
    # the ids of bert-base-chinese / hfl checkpoints, also past the U+2028 entries
    assert tok.convert_tokens_to_ids(["我", "[MASK]", "##😂"]) == [2769, 103, lines.index("##😂")]
    assert max(tok.get_vocab().values()) == 21127
    enc = tok("我喜欢NLP")
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"][-1] == tok.sep_token_id
    assert tok.convert_ids_to_tokens(enc["input_ids"])[1:4] == ["我", "喜", "欢"]
    assert tok.unk_token_id not in enc["input_ids"]


def test_tokenizer_round_trips_through_save(tmp_path):
    tok = load_tokenizer()
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    text = "这家店的服务 very good！"
    assert again(text)["input_ids"] == tok(text)["input_ids"]


def test_word_boundaries_group_chinese_words_and_wordpieces():
    tok = load_tokenizer()
    words = ["我", "喜欢", "自然语言", "处理", "playing"]  # a known segmentation
    text = "".join(words)
    ids, wids = word_ids(text, tok, words=words)
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens == [
        "[CLS]",
        "我",
        "喜",
        "欢",
        "自",
        "然",
        "语",
        "言",
        "处",
        "理",
        "play",
        "##ing",
        "[SEP]",
    ]
    assert wids == [None, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, None]
    assert word_starts(text, tok, words=words) == [1, 2, 4, 8, 10]


def test_jieba_segmentation_is_used_by_default():
    tok = load_tokenizer()
    starts = word_starts("我们喜欢北京", tok)
    # jieba: 我们 / 喜欢 / 北京 -> three words of two characters each
    assert starts == [1, 3, 5]


def test_whitespace_and_truncation():
    tok = load_tokenizer()
    ids, wids = word_ids("你好 世界" * 50, tok, truncation=True, max_length=16)
    assert len(ids) == 16 and wids[0] is None and wids[-1] is None
    assert all(w is not None for w in wids[1:-1])
