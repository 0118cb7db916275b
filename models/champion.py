"""When a newly trained version replaces the champion: one metric that must improve, and
guards that must not fall behind by more than a tolerance.

A single number can be gamed by a model that is worse where the number does not look (a
blurry video forecast lowers squared error, a VAE with weak KL pressure reconstructs well but
samples badly from its prior). A guard names the second thing a person would check.
Dagster-free, so the rule is stated beside each family's metrics and tested without a registry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Guard:
    metric: str
    higher_is_better: bool
    tolerance: float  # the challenger may be worse than the champion by at most this much

    def holds(self, challenger: float, champion: float) -> bool:
        if not math.isfinite(champion):
            return True
        if not math.isfinite(challenger):
            return False
        slack = challenger - champion if self.higher_is_better else champion - challenger
        return slack >= -self.tolerance


@dataclass(frozen=True)
class ChampionRule:
    metric: str
    higher_is_better: bool
    guards: tuple[Guard, ...] = ()

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every number the rule reads: tagged on each model version."""
        return (self.metric, *(guard.metric for guard in self.guards))

    def improves(self, challenger: float, champion: float) -> bool:
        if not math.isfinite(champion):
            return math.isfinite(challenger)
        return challenger > champion if self.higher_is_better else challenger < champion

    def judge(self, challenger: dict[str, float], champion: dict[str, float] | None) -> tuple[bool, list[str]]:
        """(promote?, one line per part of the rule). No champion yet: promote."""
        if champion is None:
            return True, [f"no champion yet: {self.metric} {challenger[self.metric]:.4f}"]
        better = self.improves(challenger[self.metric], champion.get(self.metric, math.nan))
        direction = "higher" if self.higher_is_better else "lower"
        lines = [f"{self.metric} {challenger[self.metric]:.4f} vs {champion.get(self.metric, math.nan):.4f} "
                 f"({direction} wins): {'better' if better else 'not better'}"]
        held = True
        for guard in self.guards:
            ok = guard.holds(challenger[guard.metric], champion.get(guard.metric, math.nan))
            held &= ok
            lines.append(f"guard {guard.metric} {challenger[guard.metric]:.4f} vs "
                         f"{champion.get(guard.metric, math.nan):.4f} (may be {'lower' if guard.higher_is_better else 'higher'} "
                         f"by {guard.tolerance:g}): {'holds' if ok else 'fails'}")
        return better and held, lines

    def describe(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        text = f"{self.metric}, {direction} wins"
        for guard in self.guards:
            worse = "lower" if guard.higher_is_better else "higher"
            text += f"; only if {guard.metric} is at most {guard.tolerance:g} {worse} than the champion's"
        return text
