"""Tiny model families for the reliability tests: name -> builder of (family, TrainerConfig).

Every family of `models.family.families()` is here, through its `<package>.testing` module
(`VARIANTS`, `tiny`, `bundle_round_trip`, `WEIGHTS_LOADERS`), so a new family is covered by
adding that module to its package, not by editing this file. An entry is named by the family's
key ("video_rnn"), and a family with several variants has one entry each: its first variant by
the key alone, the others by key and variant ("image_gan", "image_gan-wgan-gp").

Each builder makes the same family from the same synthetic data every time it is called, in any
process (the killed child and the test process both call it). A family without a testing module
gets an entry whose build fails saying so; a testing module that fails to import fails collection.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from models.family import FamilyRecord, families

STEPS, CHECKPOINT_EVERY = 60, 10


@dataclass(frozen=True)
class FamilyEntry:
    record: FamilyRecord
    variant: str  # one of the testing module's VARIANTS

    @property
    def module(self) -> str:
        return f"{self.record.package}.testing"

    def testing(self) -> ModuleType:
        if importlib.util.find_spec(self.module) is None:
            raise ModuleNotFoundError(f"the {self.record.name} family has no {self.module}: every family needs one "
                                      "(VARIANTS, tiny, bundle_round_trip, WEIGHTS_LOADERS; see models/image_gan/testing.py)")
        return importlib.import_module(self.module)

    def build(self, steps: int = STEPS, checkpoint_every: int = CHECKPOINT_EVERY):
        """(family, models.trainer.TrainerConfig)"""
        return self.testing().tiny(steps, checkpoint_every, self.variant)


def _entries() -> dict[str, FamilyEntry]:
    entries: dict[str, FamilyEntry] = {}
    for record in families().values():
        module = f"{record.package}.testing"
        variants = importlib.import_module(module).VARIANTS if importlib.util.find_spec(module) else ("",)
        for index, variant in enumerate(variants):
            name = record.key if index == 0 else f"{record.key}-{variant}"
            entries[name] = FamilyEntry(record, variant)
    return entries


FAMILIES: dict[str, FamilyEntry] = _entries()
# one entry per family (its first variant): for the tests about the family rather than its variants
FIRST_VARIANTS: list[str] = [name for name, entry in FAMILIES.items() if name == entry.record.key]


def build(name: str, steps: int = STEPS, checkpoint_every: int = CHECKPOINT_EVERY):
    return FAMILIES[name].build(steps, checkpoint_every)
