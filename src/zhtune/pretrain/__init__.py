"""``zhtune pretrain``: the loop (``loop``), its options (``config``), DDP (``distributed``), whole-word masking and causal collators (``masking``), corpus reading, chunking and caching (``corpus``).

The names below are imported on first use, so importing the package loads no torch.
"""

from zhtune import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "PretrainConfig": "zhtune.pretrain.loop",
        "run_pretrain": "zhtune.pretrain.loop",
        "train_step": "zhtune.pretrain.loop",
        "add_arguments": "zhtune.pretrain.loop",
        "run_cli": "zhtune.pretrain.loop",
    },
)
