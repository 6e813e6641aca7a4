"""Label maps: id <-> name, saved with every model and used by every prediction."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zhtune.errors import DataError


def is_int_label(value: str) -> bool:
    return value.lstrip("-").isdigit()


@dataclass(frozen=True)
class LabelMap:
    """An ordered list of label names; the id of a label is its index."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise DataError(f"label names must be unique, got {list(self.names)}")
        if len(self.names) < 2:
            raise DataError(f"need at least 2 classes, found {len(self.names)}: {list(self.names)}")

    @classmethod
    def from_labels(cls, labels: Iterable[str], names: Sequence[str] | None = None) -> LabelMap:
        """Build from the training labels. Integer labels sort numerically and may be given
        names (``names[i]`` is the name of integer label ``i``); other labels sort by name."""
        seen = sorted(set(labels))
        if seen and all(is_int_label(v) for v in seen):
            ints = sorted(int(v) for v in seen)
            if names:
                if ints[0] < 0 or ints[-1] >= len(names):
                    raise DataError(
                        f"label_names has {len(names)} names but the data has integer labels "
                        f"{ints}; integer label i takes name i"
                    )
                return cls(tuple(names))
            return cls(tuple(str(i) for i in ints))
        if names:
            missing = [v for v in seen if v not in names]
            if missing:
                raise DataError(f"labels {missing} are not in label_names {list(names)}")
            return cls(tuple(names))
        return cls(tuple(seen))

    def normalize(self, raw: str) -> str | None:
        """Map a raw label (a name, or an integer id when names were given) to its name."""
        if raw in self.names:
            return raw
        if is_int_label(raw) and not any(is_int_label(n) for n in self.names):
            i = int(raw)
            if 0 <= i < len(self.names):
                return self.names[i]
        return None

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def encode(self, names: Iterable[str]) -> list[int]:
        l2i = self.label2id
        return [l2i[n] for n in names]

    def __len__(self) -> int:
        return len(self.names)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps({"labels": list(self.names)}, ensure_ascii=False, indent=2), encoding="utf-8"
        )

    @classmethod
    def load(cls, path: str | Path) -> LabelMap:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(tuple(str(x) for x in data["labels"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"invalid label map ({e})", path=str(path)) from None
