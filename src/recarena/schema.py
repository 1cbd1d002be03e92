"""What a family is built from that only the data knows: its dimensions and rating scale. The datamodule gives it
(``dm.schema``), :func:`recarena.build.build_model` passes it to the family's constructor, and the run dir stores it
(``run.json``) so that a checkpoint can be rebuilt without the data. Imports nothing heavy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Schema:
    """Dimensions and scales a family is built from; given by the datamodule, never typed into configs."""

    n_users: int
    n_items: int
    rating_low: float
    rating_high: float
    global_mean: float
    genre_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
