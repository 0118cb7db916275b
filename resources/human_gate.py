"""The champion rule's optional human part (models/champion.py `HumanGate`), as the `human_gate`
resource: every training asset and `human_preference` read the same settings.

Off unless `$ATELIER_HUMAN_GATE=on` (what `build_resources` reads) or run config says
`resources: {human_gate: {config: {enabled: true}}}`. docs/human-preference.md explains it.
"""
import dagster as dg

from models.champion import HumanGate

HUMAN_GATE_ENV = "ATELIER_HUMAN_GATE"
_DEFAULT = HumanGate()


class HumanGateResource(dg.ConfigurableResource):
    enabled: bool = _DEFAULT.enabled
    alpha: float = _DEFAULT.alpha
    min_votes: int = _DEFAULT.min_votes
    max_flag_share: float = _DEFAULT.max_flag_share

    def gate(self) -> HumanGate:
        return HumanGate(self.enabled, self.alpha, self.min_votes, self.max_flag_share)
