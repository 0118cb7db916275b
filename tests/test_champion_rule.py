"""The champion rule: the metric must improve and no guard may fall behind past its tolerance."""
import math

from models.champion import HUMAN_FAIL, HUMAN_PASS, HUMAN_WAIT, ChampionRule, Guard, HumanEvidence, HumanGate

RULE = ChampionRule("heldout_mse", higher_is_better=False,
                    guards=(Guard("heldout_ssim", higher_is_better=True, tolerance=0.01),))


def test_first_version_is_champion():
    promoted, reasons = RULE.judge({"heldout_mse": 5.0, "heldout_ssim": 0.1}, None)
    assert promoted and "no champion yet" in reasons[0]


def test_better_metric_with_guard_holding_promotes():
    promoted, reasons = RULE.judge({"heldout_mse": 4.0, "heldout_ssim": 0.595},
                                   {"heldout_mse": 5.0, "heldout_ssim": 0.60})
    assert promoted and reasons[1].endswith("holds")


def test_better_metric_but_guard_falls_behind_does_not_promote():
    promoted, reasons = RULE.judge({"heldout_mse": 4.0, "heldout_ssim": 0.50},
                                   {"heldout_mse": 5.0, "heldout_ssim": 0.60})
    assert not promoted and reasons[1].endswith("fails")


def test_worse_metric_does_not_promote_and_nan_champion_is_beaten():
    assert not RULE.judge({"heldout_mse": 6.0, "heldout_ssim": 0.9}, {"heldout_mse": 5.0, "heldout_ssim": 0.6})[0]
    assert RULE.judge({"heldout_mse": 6.0, "heldout_ssim": 0.9}, {"heldout_mse": math.nan, "heldout_ssim": math.nan})[0]


def test_describe_names_every_part():
    assert RULE.describe() == "heldout_mse, lower wins; only if heldout_ssim is at most 0.01 lower than the champion's"


# --- the optional human gate ---------------------------------------------------------------------

GATE = HumanGate(enabled=True, alpha=0.05, min_votes=20, max_flag_share=0.05)


def test_human_gate_off_passes_without_votes():
    assert HumanGate().judge(HumanEvidence(math.nan, math.nan, 0, 99)) == (HUMAN_PASS, "human gate off")


def test_human_gate_waits_for_votes_then_tests_one_sided():
    assert GATE.judge(HumanEvidence(-3.0, 0.1, 19, 0))[0] == HUMAN_WAIT
    assert GATE.judge(HumanEvidence(math.nan, math.nan, 25, 0))[0] == HUMAN_WAIT  # never compared with the champion
    verdict, line = GATE.judge(HumanEvidence(-0.5, 0.2, 40, 0))  # z = -2.5, p = 0.0062
    assert verdict == HUMAN_FAIL and "significantly worse" in line and "p 0.00621" in line
    assert GATE.judge(HumanEvidence(-0.2, 0.2, 40, 0))[0] == HUMAN_PASS  # z = -1, p = 0.16: not significant
    assert GATE.judge(HumanEvidence(0.8, 0.2, 40, 0))[0] == HUMAN_PASS
    assert HumanGate(enabled=True, alpha=0.2, min_votes=20).judge(HumanEvidence(-0.2, 0.2, 40, 0))[0] == HUMAN_FAIL


def test_human_gate_flags_above_the_share_block_even_a_preferred_version():
    verdict, line = GATE.judge(HumanEvidence(1.0, 0.2, 40, 3))  # 3 / 43 = 7% > 5%
    assert verdict == HUMAN_FAIL and "flagged 3 times" in line
    assert GATE.judge(HumanEvidence(1.0, 0.2, 40, 2))[0] == HUMAN_PASS  # 2 / 42 = 4.8%
