"""Everything after training: inference backends (``encoder``), ``zhtune predict`` (``predict``), ``zhtune export`` (``export``), ``zhtune serve`` (``server``, its micro-batcher ``batcher``, the page in ``web/``).

The names below are imported on first use, so importing the package loads no torch.
"""

from zhtune import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "EncoderBackend": "zhtune.serving.encoder",
        "create_app": "zhtune.serving.server",
        "ServeSettings": "zhtune.serving.server",
    },
)
