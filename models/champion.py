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


@dataclass(frozen=True)
class HumanEvidence:
    """What people said about a challenger against the champion (ratings/preference.py fits it)."""
    difference: float  # challenger's Bradley-Terry score minus the champion's (log-odds); nan: not compared
    std_error: float  # of that difference
    votes: int  # pairwise votes the challenger took part in
    flags: int  # flags on the challenger's samples, every reason together


HUMAN_PASS, HUMAN_FAIL, HUMAN_WAIT = "pass", "fail", "wait"
HUMAN_NOT_ASKED = "not asked"  # the metric part failed first


@dataclass(frozen=True)
class HumanGate:
    """The optional second half of the champion rule: people must not significantly prefer the
    champion, and must not have flagged the challenger too often. Off by default."""
    enabled: bool = False
    alpha: float = 0.05  # significance level of the one-sided test
    min_votes: int = 20  # the challenger's pairwise votes before the test is run
    max_flag_share: float = 0.05  # flags / (votes + flags) above this blocks promotion

    def judge(self, evidence: HumanEvidence) -> tuple[str, str]:
        """(HUMAN_PASS, HUMAN_FAIL or HUMAN_WAIT, one line why). The test: H0 "the challenger is
        not worse", z = difference / std_error, p = Phi(z); reject (fail) when p < alpha."""
        if not self.enabled:
            return HUMAN_PASS, "human gate off"
        share = evidence.flags / (evidence.votes + evidence.flags) if evidence.flags else 0.0
        if share > self.max_flag_share:
            return HUMAN_FAIL, (f"flagged {evidence.flags} times against {evidence.votes} votes "
                                f"({share:.1%}, above {self.max_flag_share:.1%})")
        if evidence.votes < self.min_votes or not math.isfinite(evidence.difference):
            return HUMAN_WAIT, f"waiting for votes: {evidence.votes} of {self.min_votes}"
        if evidence.std_error > 0:
            z = evidence.difference / evidence.std_error
        else:  # no uncertainty left: the sign decides
            z = math.copysign(math.inf, evidence.difference)
        p = 0.5 * math.erfc(-z / math.sqrt(2))  # Phi(z)
        verdict = HUMAN_FAIL if p < self.alpha else HUMAN_PASS
        worse = "significantly worse" if verdict == HUMAN_FAIL else "not significantly worse"
        return verdict, (f"human score {evidence.difference:+.3f} ± {evidence.std_error:.3f} vs the champion "
                         f"(z {z:.2f}, one-sided p {p:.3g}, alpha {self.alpha:g}, {evidence.votes} votes): {worse}")

    def describe(self) -> str:
        if not self.enabled:
            return "human gate off"
        return (f"and people do not prefer the champion (one-sided z-test on the Bradley-Terry score difference, "
                f"alpha {self.alpha:g}, after {self.min_votes} votes), "
                f"flags at most {self.max_flag_share:.0%} of its ratings")
