"""The champion rule: the metric must improve and no guard may fall behind past its tolerance."""
import math

from models.champion import ChampionRule, Guard

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
