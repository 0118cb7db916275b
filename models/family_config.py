"""What every family's config dataclass shares: its dict form and the trainer settings it implies.

Only the standard library at module level: `models/` ships with each registered pyfunc and is
imported in a process that has neither corpora/ nor dagster.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import ClassVar


class FamilyConfig:
    """A mixin for a family's config dataclass, which must have `steps`, `batch_size` and `seed` fields.

    A plain class rather than a dataclass, so that the subclass's fields keep their own order."""

    log_every_cap = 100  # at most this many steps between two logged losses
    PROFILES: ClassVar[dict[str, dict]] = {}  # each family's named settings: "demo" (minutes on 2 CPU cores), "cpu-long", "gpu"

    @classmethod
    def profile(cls, name: str, **overrides):
        """A named profile, with any field overridden; an unknown name says which exist."""
        if name not in cls.PROFILES:
            raise ValueError(f"unknown profile {name!r}: choose one of {sorted(cls.PROFILES)}")
        return cls(**{**cls.PROFILES[name], **overrides})

    def to_dict(self) -> dict:
        # tuples as lists, so the dict reads back the same from JSON
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict):
        """The config from a stored dict, ignoring keys this version no longer has."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def trainer_config(self, **overrides):
        from models.trainer import TrainerConfig  # lazily: the pyfunc process has no corpora/

        values = dict(
            steps=self.steps,
            batch_size=self.batch_size,
            seed=self.seed,
            checkpoint_every=max(1, self.steps // 4),
            log_every=max(1, min(self.log_every_cap, self.steps // 20)),
        )
        values.update(overrides)
        return TrainerConfig(**values)
