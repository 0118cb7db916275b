"""Which model versions people prefer: a Bradley-Terry model per family, fitted on pairwise votes.

P(version i's sample beats version j's) = 1 / (1 + exp(-(s_i - s_j))): each version gets a score
s in log-odds, fitted by `choix.opt_pairwise` (maximum a posteriori under a small L2 penalty, so
a version that only ever won keeps a finite score; the penalty also centres the scores on 0).
The standard errors come from the inverse Hessian of that penalised negative log-likelihood
(Laplace approximation), docs/human-preference.md says more. No Dagster here.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from models.champion import HumanEvidence
from ratings.store import FLAG_REASONS, Flag, PairwiseVote

L2_PENALTY = 0.01  # choix's `alpha`: adds 0.01 * sum(s^2), a N(0, 50) prior on each score
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class VersionPreference:
    version: str
    score: float  # Bradley-Terry strength in log-odds, centred on the family's mean; nan without comparisons
    std_error: float  # of the centred score
    votes: int  # pairwise votes against another version of the family
    wins: int
    flags: dict[str, int] = field(default_factory=dict)  # reason -> count, every reason present

    @property
    def low(self) -> float:
        return self.score - Z_95 * self.std_error

    @property
    def high(self) -> float:
        return self.score + Z_95 * self.std_error

    @property
    def flag_count(self) -> int:
        return sum(self.flags.values())


@dataclass(frozen=True)
class FamilyPreference:
    family: str
    versions: dict[str, VersionPreference]
    covariance: np.ndarray  # of the scores of the compared versions, in `compared` order
    compared: tuple[str, ...]  # versions with at least one vote against another version

    def difference(self, version: str, other: str) -> tuple[float, float]:
        """(score of `version` minus score of `other`, its standard error); (nan, nan) unless both
        were compared. The covariance term matters: scores fitted from the same votes move together."""
        if version not in self.compared or other not in self.compared:
            return math.nan, math.nan
        i, j = self.compared.index(version), self.compared.index(other)
        c = self.covariance
        return (self.versions[version].score - self.versions[other].score,
                math.sqrt(max(c[i, i] + c[j, j] - 2 * c[i, j], 0.0)))


def fit_family(family: str, votes: Iterable[PairwiseVote], flags: Iterable[Flag] = ()) -> FamilyPreference:
    """The family's Bradley-Terry scores from its votes (a vote between two samples of one version
    says nothing about versions and is left out), with flag counts for every flagged version."""
    comparisons = [(v.winner_version, v.loser_version) for v in votes
                   if v.family == family and v.winner_version != v.loser_version]
    flag_counts: dict[str, Counter] = {}
    for flag in flags:
        if flag.family == family:
            flag_counts.setdefault(flag.model_version, Counter())[flag.reason] += 1
    compared = tuple(sorted({version for pair in comparisons for version in pair}, key=_version_order))
    index = {version: i for i, version in enumerate(compared)}
    data = [(index[winner], index[loser]) for winner, loser in comparisons]
    scores = np.full(len(compared), math.nan)
    covariance = np.full((len(compared), len(compared)), math.nan)
    if data:
        import choix  # with SciPy's optimizers, ~2 s to import on a busy machine: only when there are votes
        from choix.opt import PairwiseFcts

        scores = choix.opt_pairwise(len(compared), data, alpha=L2_PENALTY)
        # Only differences are identified by votes (the weak prior alone pins the overall level), so
        # state the covariance of the centred scores: P C P with P the centring projection.
        centring = np.eye(len(compared)) - 1.0 / len(compared)
        covariance = centring @ np.linalg.inv(PairwiseFcts(data, L2_PENALTY).hessian(scores)) @ centring
    wins = Counter(winner for winner, _ in comparisons)
    votes_of = Counter(version for pair in comparisons for version in pair)
    every = sorted(set(compared) | set(flag_counts), key=_version_order)
    versions = {}
    for version in every:
        i = index.get(version)
        versions[version] = VersionPreference(
            version=version,
            score=float(scores[i]) if i is not None else math.nan,
            std_error=math.sqrt(covariance[i, i]) if i is not None else math.nan,
            votes=votes_of[version], wins=wins[version],
            flags={reason: flag_counts.get(version, Counter())[reason] for reason in FLAG_REASONS},
        )
    return FamilyPreference(family, versions, covariance, compared)


def _version_order(version: str) -> tuple:
    """Registry versions are numbers: 2 before 10."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def evidence(preference: FamilyPreference, challenger: str, champion: str) -> HumanEvidence:
    """What the champion rule's human gate reads about `challenger` against `champion`."""
    difference, std_error = preference.difference(challenger, champion)
    found = preference.versions.get(challenger)
    return HumanEvidence(difference, std_error, found.votes if found else 0, found.flag_count if found else 0)
