"""``zhtune quickstart``: the main job on built-in data, one summary a person reads.

Stages, each its own run directory under ``--out``, all on the same train/dev/test split:

1. ``baseline/``: TF-IDF (character 1-3 grams) + logistic regression;
2. the base model (``--base-model``): ``builtin:NAME`` (a RoBERTa zhtune pretrained on the
   general-domain corpus of :mod:`zhtune.data.corpus`, shipped with it), a directory or hub id;
   or ``pretrain``: a tiny RoBERTa pretrained here (``pretrain/``, MLM with whole-word masking)
   on the texts of the *training split only* (no dev/test text); ``auto`` = the shipped base
   if this version ships one, else ``pretrain``;
3. ``finetune/``: the base fine-tuned for classification (:mod:`zhtune.finetune.encoder`);
4. ``scratch/``: the control: the same architecture and fine-tuning from random weights;
5. ``llm/``: a causal LM (``--llm-base-model``, same rules), then LoRA with a classifier head,
   LoRA by label scoring, and zero-shot label scoring (:func:`zhtune.llm.lora.run_llm_branch`);
6. ``ensemble/``: ``ensemble_members`` (default TF-IDF + the fine-tuned encoder) combined with
   weights fitted on the dev rows (:mod:`zhtune.finetune.ensemble`);
7. ``distill/``: one encoder of the base's shape trained on the ensemble's soft labels
   (:mod:`zhtune.finetune.distill`), as fast as the fine-tuned model;
8. ``compare/``: every model scored on the same test rows by ``zhtune compare``.

**Every budget is a step count** (``*_max_steps``, ``finetune_epochs``), so two runs give the
same rows on any machine (up to floating-point noise). ``pretrain_minutes`` and
``llm_pretrain_minutes`` are only wall-clock *caps*: off by default; when one stops a stage
early, the summary says so. ``summary.md`` / ``summary.json`` hold one row per model, a
verdict and the next steps (the same pipeline on real checkpoints); ``report.html`` shows the
table with every run's figures.
"""

from zhtune.quickstart.config import BUILTIN_CAUSAL, BUILTIN_ENCODER, QuickstartConfig
from zhtune.quickstart.stages import run_quickstart
from zhtune.quickstart.summary import compare_to_baseline, stable_rows, summary_table

__all__ = [
    "BUILTIN_CAUSAL",
    "BUILTIN_ENCODER",
    "QuickstartConfig",
    "compare_to_baseline",
    "run_quickstart",
    "stable_rows",
    "summary_table",
]
