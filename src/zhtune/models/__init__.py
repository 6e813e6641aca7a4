"""Base models shipped with zhtune (`--model builtin:NAME`): see :mod:`zhtune.models.builtin`."""
