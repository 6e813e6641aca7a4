"""Encoder fine-tuning (``zhtune finetune``, ``encoder``).

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
    },
)
