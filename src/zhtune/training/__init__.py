"""Shared floor of every training command: the HF Trainer plumbing (trainer), the one checkpoint system (checkpoints), losses (losses), tracking and status files (tracking), and the ``zhtune runs`` listing (``runs_cli``).

The names below are imported on first use, so importing the package loads no torch.
"""

from zhtune import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "TrainingConfig": "zhtune.training.trainer",
        "run_trainer": "zhtune.training.trainer",
        "find_checkpoint": "zhtune.training.checkpoints",
        "resolve_resume": "zhtune.training.checkpoints",
    },
)
