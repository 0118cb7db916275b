"""The whole video model: a recurrent forecaster (ConvLSTM or PredRNN-V2) read through a
space-to-depth patch, and the PixelCNN head conditioned on its state (docs/video-rnn.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.video_rnn.config import VideoRnnConfig
from models.video_rnn.convlstm import ConvLSTMStack
from models.video_rnn.frames import model_frames, quantize, to_subpixels
from models.video_rnn.pixelcnn import PixelCnnHead
from models.video_rnn.predrnn import PredRnnStack

STACKS = {"convlstm": ConvLSTMStack, "predrnn_v2": PredRnnStack}  # VideoRnnConfig.architecture -> recurrence


class PatchDecoder(nn.Conv2d):
    """A 1x1 conv to each patch's pixels, unpatched: every patch is predicted on its own."""

    def __init__(self, hidden: int, channels: int, patch: int):
        super().__init__(hidden, channels * patch * patch, 1)
        self.patch = patch

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(super().forward(features), self.patch)


def mean_decoder(config: VideoRnnConfig) -> nn.Module:
    """Top features (B, hidden, h, w) -> the change of the frame (B, C, H, W).

    "patch": PatchDecoder. "resize": a 1x1 conv to `decoder_channels`, a bilinear upsample to
    full resolution and a 3x3 conv there (resize-convolution, Odena et al. 2016), so neighbouring
    patches blend at their seams. Its last conv starts at zero: with `residual`, an untrained
    model predicts "nothing moves", a strong start on video."""
    c, p = config.channels, config.patch
    if config.decoder == "patch":
        decoder = PatchDecoder(config.hidden[-1], c, p)
        last = decoder
    else:
        last = nn.Conv2d(config.decoder_channels, c, 3, padding=1)
        decoder = nn.Sequential(nn.Conv2d(config.hidden[-1], config.decoder_channels, 1),
                                nn.Upsample(scale_factor=p, mode="bilinear", align_corners=False), nn.ReLU(), last)
    if config.residual:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return decoder


class VideoRnn(nn.Module):
    def __init__(self, config: VideoRnnConfig):
        super().__init__()
        self.config = config
        c, p = config.channels, config.patch
        self.stack = STACKS[config.architecture](c * p * p, config.hidden, config.kernel)
        self.to_mean = mean_decoder(config)
        self.to_cond = nn.Conv2d(config.hidden[-1], config.cond_channels * p * p, 1)
        position = c if c > 1 else 0  # one-hot of a sub-pixel's channel, only when there are several
        head_cond = config.cond_channels + 2 * c + position  # features, mean and previous frame, position
        self.head = PixelCnnHead(head_cond, config.head_width, config.head_layers, config.head_first_kernel,
                                 config.head_kernel, config.levels)

    def step(self, frame: torch.Tensor, state=None):
        """Read one frame (B, C, H, W), a model frame (model_frames) -> mean of the next frame, top
        features, state."""
        features, state = self.stack.step(F.pixel_unshuffle(frame, self.config.patch), state)
        mean = self.to_mean(features)
        if self.config.residual:
            mean = mean + frame
        return mean, features, state

    def read(self, frames: torch.Tensor, state=None, keep_true: torch.Tensor | None = None):
        """Read frames (B, T, C, H, W): the mean after each (the prediction of the frame after it),
        the features after each, and the final state. With `keep_true` (B, T) booleans, frame t > 0
        of a clip is replaced where False by the model's own prediction of it, as a model frame
        (reverse scheduled sampling; its gradient passes straight through)."""
        means, features = [], []
        for t in range(frames.size(1)):
            frame = frames[:, t]
            if keep_true is not None and t > 0:
                predicted = model_frames(means[-1], self.config.levels)
                frame = torch.where(keep_true[:, t, None, None, None], frame, predicted)
            mean, feat, state = self.step(frame, state)
            means.append(mean)
            features.append(feat)
        return torch.stack(means, dim=1), torch.stack(features, dim=1), state

    def roll(self, mean: torch.Tensor, state, steps: int) -> tuple[torch.Tensor, object]:
        """Feed the model its own mean, as a model frame, `steps` times: (B, steps, C, H, W)
        further means, and the state after them."""
        means = []
        for _ in range(steps):
            mean, _, state = self.step(model_frames(mean, self.config.levels), state)
            means.append(mean)
        return (torch.stack(means, dim=1) if means else mean.new_zeros(mean.size(0), 0, *mean.shape[1:])), state

    def head_inputs(self, features: torch.Tensor, mean: torch.Tensor, previous: torch.Tensor):
        """The head's conditioning map (N, D, H, W*C) and mixture centres (N, 2, H, W*C: the mean,
        the previous frame), in the sub-pixel layout, from the forecaster's features (N, hidden, h,
        w), its mean (N, C, H, W) and the previous frame (N, C, H, W)."""
        c = self.config.channels
        learned = F.pixel_shuffle(self.to_cond(features), self.config.patch)
        mean = mean.clamp(0, 1)
        centres = torch.cat([to_subpixels(mean), to_subpixels(previous)], dim=1)
        per_pixel = torch.cat([learned, mean.to(learned.dtype), previous.to(learned.dtype)], dim=1)
        if c == 1:
            return per_pixel, centres
        n, d, h, w = per_pixel.shape
        spread = per_pixel[..., None].expand(n, d, h, w, c).reshape(n, d, h, w * c)
        position = torch.eye(c, device=spread.device, dtype=spread.dtype).repeat(1, w)  # (C, W*C)
        return torch.cat([spread, position[None, :, None, :].expand(n, c, h, w * c)], dim=1), centres


def lost_detail(frames: torch.Tensor, config: VideoRnnConfig) -> torch.Tensor | None:
    """What quantizing full-precision `frames` to model frames dropped, which the served mean adds
    back onto the means predicted after reading them (`keep_detail`); None when it is not kept.
    With it, a residual model whose change is zero forecasts exactly the copy-last baseline."""
    return frames - model_frames(frames, config.levels) if config.keep_detail else None


def head_nll(model: VideoRnn, features: torch.Tensor, means: torch.Tensor, previous: torch.Tensor,
             targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per dimension) of the head on frames (N, C, H, W), teacher-forced:
    the head's inputs are the true pixels."""
    cond, centres = model.head_inputs(features, means, previous)
    labels = to_subpixels(quantize(targets, model.config.levels))
    logits = model.head(model.head.embed(labels), cond, centres)
    return F.cross_entropy(logits.float(), labels[:, 0])
