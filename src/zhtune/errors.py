"""User-facing errors. The CLI prints them as one line (no traceback unless --debug)."""

from __future__ import annotations


class ZhtuneError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""


class ConfigError(ZhtuneError):
    """A config field has a bad value."""


class DataError(ZhtuneError):
    """A data file or row is malformed."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.reason = message
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(where + message)


class ModelLoadError(ZhtuneError):
    """A model directory cannot be loaded safely."""
