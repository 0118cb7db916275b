"""The video family's settings: `VideoRnnConfig` and its named profiles (timings in docs/video-rnn.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from models.family_config import FamilyConfig


# 64x64, 10 -> 10, grayscale, ConvLSTM 2 x 32, SSIM loss: about 2.5 minutes on 2 idle CPU cores
CONVLSTM_DEMO = dict(hidden=(32, 32), kernel=3, ssim_weight=1.0, keep_detail=True, head_width=16, head_layers=4,
                     head_frames=1, batch_size=4, lr=2e-3, steps=300)


@dataclass
class VideoRnnConfig(FamilyConfig):
    log_every_cap = 50

    context_frames: int = 10  # M: frames the model reads before predicting
    horizon: int = 10  # K: future frames it is trained to predict (predict() may roll further)
    resolution: int = 64  # square frames; clips of another size are area-resized by an integer factor
    channels: int = 1  # 1: luminance, 3: RGB
    patch: int = 4  # space-to-depth factor in front of the recurrence (PredRNN)
    architecture: str = "convlstm"  # one of ARCHITECTURES: the recurrence (docs/video-rnn.md)
    hidden: tuple[int, ...] = (64, 64)  # recurrent widths, bottom layer first (equal for predrnn_v2)
    kernel: int = 3  # recurrent kernel (on the patched map: 3 spans 12 pixels at patch 4)
    decoder: str = "patch"  # one of DECODERS: how the mean leaves the patched map
    decoder_channels: int = 16  # "resize": features upsampled to full resolution before its 3x3 conv
    decouple_weight: float = 0.1  # predrnn_v2: weight of the memory decoupling term
    true_context_start: float = 1.0  # reverse scheduled sampling: first chance of a true context frame (1: off)
    true_context_ramp: tuple[float, float] = (0.1, 0.6)  # fractions of `steps` over which it rises to 1
    ssim_weight: float = 0.0  # weight of 1 - SSIM of the free-running means (the metric's window), beside MSE
    levels: int = 16  # quantized intensities per channel the head predicts
    cond_channels: int = 8  # forecaster features per pixel given to the head
    head_width: int = 16  # channels of each PixelCNN stack
    head_layers: int = 4  # gated layers, the first one mask-A-like (sees strictly earlier pixels)
    head_first_kernel: int = 5  # first layer: rows above and columns each side = kernel // 2
    head_kernel: int = 3  # later layers
    head_frames: int = 1  # future frames per clip the head's loss sees each step
    residual: bool = True  # the mean is the frame just read plus a learned change (starts as copy-last)
    keep_detail: bool = False  # the served mean adds back what quantizing the last frame read dropped
    mse_weight: float = 10.0
    nll_weight: float = 1.0
    augment: bool = True
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * this over `steps`
    grad_clip: float = 5.0
    batch_size: int = 8
    steps: int = 300
    seed: int = 0

    ARCHITECTURES: ClassVar[tuple[str, ...]] = ("convlstm", "predrnn_v2")
    DECODERS: ClassVar[tuple[str, ...]] = ("patch", "resize")

    PROFILES: ClassVar[dict[str, dict]] = {
        "demo": CONVLSTM_DEMO,
        # PredRNN-V2: ST-LSTM 2 x 48, a resize-conv mean, reverse scheduled sampling, an SSIM loss,
        # batch 8 for the demo's 300 steps: about 20 minutes of one CPU core (3.9 CPU s a step); it
        # keeps the objects' outlines where the ConvLSTM's means blur (docs/video-rnn.md, "The
        # 20-minute budget")
        "cpu-long": dict(architecture="predrnn_v2", hidden=(48, 48), kernel=3, decoder="resize",
                         true_context_start=0.5, ssim_weight=1.0, keep_detail=True, head_width=16, head_layers=4,
                         head_frames=1, batch_size=8, lr=2e-3, steps=300),
        # the demo 7.5 times longer: the same 20 minutes (0.56 CPU s a step)
        "convlstm-cpu-long": {**CONVLSTM_DEMO, "steps": 2250},
        # PredRNN-V2 as the paper sized it for Moving MNIST (4 x 128, kernel 5, patch 4) and a VPN-like head
        # trained on every future frame
        "gpu": dict(architecture="predrnn_v2", decoder="resize", true_context_start=0.5, ssim_weight=1.0,
                    hidden=(128, 128, 128, 128), kernel=5, cond_channels=16, head_width=64, head_layers=8,
                    head_frames=10, batch_size=32, lr=1e-3, steps=50000),
    }

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        self.true_context_ramp = tuple(float(f) for f in self.true_context_ramp)
        if self.architecture not in self.ARCHITECTURES or self.decoder not in self.DECODERS:
            raise ValueError(f"architecture must be one of {self.ARCHITECTURES} and decoder one of {self.DECODERS}")
        first, last = self.true_context_ramp
        if not (0 <= self.true_context_start <= 1 and 0 <= first <= last <= 1):
            raise ValueError("true_context_start must lie in 0..1 and true_context_ramp be fractions in order")
        if self.keep_detail and not self.residual:
            raise ValueError("keep_detail adds the last frame's detail to a residual mean: it needs residual")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if self.context_frames < 1 or self.horizon < 1:
            raise ValueError("context_frames and horizon must be at least 1")
        if self.patch < 1 or self.resolution % self.patch:
            raise ValueError(f"resolution {self.resolution} must be a multiple of patch {self.patch}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError("hidden needs at least one positive width")
        for name in ("kernel", "head_first_kernel", "head_kernel"):
            value = getattr(self, name)
            if value < 1 or value % 2 == 0:
                raise ValueError(f"{name} must be odd and positive, not {value}")
        if self.head_first_kernel < 3 or self.head_kernel < 3:
            raise ValueError("head kernels must be at least 3 (a kernel of 1 sees no earlier pixel)")
        if not 2 <= self.levels <= 256:
            raise ValueError(f"levels must lie in 2..256, not {self.levels}")
        if self.head_layers < 1 or not 1 <= self.head_frames <= self.horizon:
            raise ValueError("head_layers must be >= 1 and head_frames within 1..horizon")

    @property
    def clip_frames(self) -> int:
        return self.context_frames + self.horizon
