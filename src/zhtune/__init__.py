"""zhtune: Chinese text classification from raw text to a served model."""

__version__ = "0.1.0"

from zhtune.classifier import Classifier  # noqa: E402

__all__ = ["Classifier", "__version__"]
