"""Video family: a recurrent forecaster (ConvLSTM, or PredRNN-V2) with a gated PixelCNN head (docs/video-rnn.md).

Given M context frames it predicts K future frames: "mean" continuations from the forecaster,
"sample" continuations drawn pixel by pixel from the head, whose likelihood of the quantized
video is exact. Scored on held-out clips against copying the last context frame.
"""
from models.champion import ChampionRule, Guard
from models.family import FamilyRecord

# Lowest MSE would reward blur (a blurred forecast lowers squared error while its SSIM falls below
# copy-last's), so the score weighs MSE and 1 - SSIM against copy-last-frame (metrics.score_by_horizon)
# and the mean held-out SSIM may not fall more than 0.02 below the champion's.
CHAMPION_RULE = ChampionRule("score_vs_copy_last", higher_is_better=False,
                             guards=(Guard("heldout_ssim", higher_is_better=True, tolerance=0.02),))
FAMILY = FamilyRecord(name="video-rnn", title="Video (ConvLSTM + PixelCNN)", corpus="video", rule=CHAMPION_RULE,
                      samples="video", package=__name__, pyfunc_class="VideoRnnPyfunc")
