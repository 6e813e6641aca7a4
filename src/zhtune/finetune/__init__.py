"""Encoder fine-tuning (``zhtune finetune``, ``encoder``), ensembles (``ensemble``),
distillation (``distill``) and training-time augmentation (``augment``).

The names below are imported on first use, so importing the package loads no torch.
"""

from zhtune import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "FinetuneConfig": "zhtune.finetune.encoder",
        "run_finetune": "zhtune.finetune.encoder",
        "add_arguments": "zhtune.finetune.encoder",
        "run_cli": "zhtune.finetune.encoder",
        "EnsembleConfig": "zhtune.finetune.ensemble",
        "run_ensemble": "zhtune.finetune.ensemble",
        "DistillConfig": "zhtune.finetune.distill",
        "run_distill": "zhtune.finetune.distill",
        "distill_loss": "zhtune.finetune.distill",
        "AugmentConfig": "zhtune.finetune.augment",
        "augment_splits": "zhtune.finetune.augment",
    },
)
