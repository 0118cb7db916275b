"""Neural style transfer by optimisation (Gatys, Ecker & Bethge, CVPR 2016), without VGG.

The pixels of the result are optimised (Adam) so that the Gram matrices of its feature maps
match the style image's, while its deepest feature map stays close to the content image's.
The result starts as the content image and is parameterised as tanh(u), so it stays in
[-1, 1] without clipping. A small total-variation term (not in Gatys et al.; Johnson et al.
2016 use one) smooths the colour speckle that random filters otherwise leave behind.

Pretrained VGG weights cannot be downloaded here, so the feature network is one of:
- "random": a CNN with random multi-scale filters at a fixed seed, never trained. Ustyuzhaninov
  et al. 2016 ("Texture synthesis using shallow convolutional networks with random filters")
  show that such networks, with filters of several sizes, synthesize textures comparable to
  VGG's. Here: `RANDOM_STAGES` stages, each of parallel conv+ReLU branches with kernel sizes
  `RANDOM_KERNELS`, average-pooled 2x between stages; every stage's output is a style layer.
- "classifier": models.classifier.FeatureClassifier with the image_classifier asset's weights
  (the caller passes the state dict). It was trained on 1-channel Fashion-MNIST, so it sees the
  luminance only: the style then moves brightness structure, and the result keeps the content's
  colours (Gatys et al. 2016b's luminance-only transfer). Max-pools, in a classifier that has
  them, are replaced by average pools, as Gatys et al. do for VGG, for smoother gradients.

Every result says which network made it (`StyleTransferResult.feature_network`). Each Gram
(or content) loss is divided by the squared norm of its own target, so the two networks -
whose activations differ in scale by orders of magnitude - share one set of weights, and a
loss of 1 means "as far as from zero".
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.classifier import FeatureClassifier

RANDOM_KERNELS = (3, 5, 7)
RANDOM_WIDTH = 32  # channels per branch; narrower is faster but leaves more colour speckle
RANDOM_STAGES = 3
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601
TANH_LIMIT = 0.999  # keeps atanh of a saturated content pixel finite
TRIPTYCH_GAP, TRIPTYCH_BACKGROUND = 4, 255
FEATURE_BATCH = 128  # images per forward pass in style_statistics


@dataclass
class StyleTransferConfig:
    feature_network: str = "random"  # "random" | "classifier"
    size: int = 128  # long side of the result in pixels (the content is resized to it)
    steps: int = 150
    style_weight: float = 10.0
    content_weight: float = 1.0
    tv_weight: float = 0.5  # total variation: random filters leave colour speckle without it; 1+ smears the style
    lr: float = 0.05  # Adam on the tanh-parameterised pixels
    seed: int = 0  # the random feature network's filters

    def to_dict(self) -> dict:
        return asdict(self)


DEMO = StyleTransferConfig()  # the gallery's default; timings in docs/painting-gan.md


@dataclass
class StyleTransferResult:
    image: np.ndarray  # uint8 (H, W, 3)
    feature_network: str  # which network defined "style", e.g. "random_cnn(seed=0, ...)"
    style_losses: list[float] = field(default_factory=list)  # before each step, and after the last
    content_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)


# --- feature networks --------------------------------------------------------------------


class RandomFeatureNetwork(nn.Module):
    """Random multi-scale filters (He-scaled normal, zero bias), frozen; returns each stage's
    ReLU output."""

    def __init__(self, seed: int = 0, channels: int = 3, kernels=RANDOM_KERNELS, width: int = RANDOM_WIDTH,
                 stages: int = RANDOM_STAGES):
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed))
        self.stages = nn.ModuleList()
        in_channels = channels
        for _ in range(stages):
            branches = nn.ModuleList()
            for kernel in kernels:
                conv = nn.Conv2d(in_channels, width, kernel, padding=kernel // 2)
                fan_in = in_channels * kernel * kernel
                with torch.no_grad():
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
                    conv.bias.zero_()
                branches.append(conv)
            self.stages.append(branches)
            in_channels = width * len(kernels)
        self.requires_grad_(False).eval()
        self.description = (f"random_cnn(seed={seed}, kernels={'/'.join(map(str, kernels))}, "
                            f"width={width}x{len(kernels)}, stages={stages}; untrained, Ustyuzhaninov et al. 2016)")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index, branches in enumerate(self.stages):
            if index:
                x = F.avg_pool2d(x, 2)
            x = torch.cat([F.relu(conv(x)) for conv in branches], dim=1)
            features.append(x)
        return features


def luminance(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(LUMINANCE, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x * weights).sum(dim=1, keepdim=True)


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


class ClassifierFeatureNetwork(nn.Module):
    """The convolutional body of a FeatureClassifier state dict; returns its ReLU outputs."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        super().__init__()
        if isinstance(state.get("model"), Mapping):  # the image_classifier asset's file: {"model": state, ...}
            state = state["model"]
        channels, num_classes = state["body.0.weight"].shape[1], state["head.weight"].shape[0]
        classifier = FeatureClassifier(channels, num_classes)
        classifier.load_state_dict(state)
        self.channels = channels
        self.body = nn.ModuleList(
            nn.AvgPool2d(m.kernel_size) if isinstance(m, nn.MaxPool2d) else m
            for m in classifier.body
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d))  # the conv part, not the pooled head
        )
        self.requires_grad_(False).eval()
        on = "luminance" if channels == 1 else f"{channels} channels"
        self.description = f"feature_classifier(sha256:{state_fingerprint(state)}, on {on}, relu layers, avg-pooled)"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.channels == 1 and x.shape[1] != 1:
            x = luminance(x)
        features = []
        for module in self.body:
            x = module(x)
            if isinstance(module, nn.ReLU):
                features.append(x)
        return features


def feature_network(name: str = "random", seed: int = 0, classifier_state: Mapping | None = None) -> nn.Module:
    """A frozen feature network whose forward returns a list of feature maps (the style layers,
    the last of which is the content layer) and whose `description` names it."""
    if name == "random":
        return RandomFeatureNetwork(seed)
    if name == "classifier":
        if classifier_state is None:
            raise ValueError("the 'classifier' feature network needs classifier_state (a FeatureClassifier state dict)")
        return ClassifierFeatureNetwork(classifier_state)
    raise ValueError(f"feature_network must be 'random' or 'classifier', not {name!r}")


# --- features and Gram matrices ----------------------------------------------------------


def to_tensor(image_uint8) -> torch.Tensor:
    """uint8 (H, W, C) or (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    pixels = torch.as_tensor(np.array(image_uint8, dtype=np.uint8, copy=True))
    if pixels.ndim == 3:
        pixels = pixels[None]
    return pixels.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_image(x: torch.Tensor) -> np.ndarray:
    """float (1, C, H, W) in [-1, 1] -> uint8 (H, W, C)."""
    return x[0].detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def style_features(network: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The network's feature maps of float images (N, C, H, W) in [-1, 1]."""
    return network(images)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C): channel co-activations averaged over positions, so the
    matrices of images of different sizes compare."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


@torch.no_grad()
def style_statistics(network: nn.Module, images_uint8, batch: int = FEATURE_BATCH) -> np.ndarray:
    """One vector per image (N, D): for every style layer, each channel's mean activation and
    its standard deviation (from the Gram diagonal: E[f^2] - E[f]^2). The painting metrics'
    KID runs on these."""
    out = []
    for start in range(0, len(images_uint8), batch):
        parts = []
        for features in style_features(network, to_tensor(images_uint8[start : start + batch])):
            mean = features.mean(dim=(2, 3))
            second = torch.diagonal(gram_matrix(features), dim1=1, dim2=2)
            parts += [mean, (second - mean.square()).clamp_min(0).sqrt()]
        out.append(torch.cat(parts, dim=1).double())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (the smoothness prior of Johnson et al. 2016)."""
    return (x[:, :, 1:] - x[:, :, :-1]).abs().mean() + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()


def _relative_mse(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (value - target).square().sum() / target.square().sum().clamp_min(torch.finfo(target.dtype).tiny)


# --- the optimisation --------------------------------------------------------------------


def resize_long_side(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[2:]
    scale = size / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=scale < 1)


def transfer(content_uint8, style_uint8, config: StyleTransferConfig | None = None,
             classifier_state: Mapping | None = None) -> StyleTransferResult:
    """Re-paint `content` (uint8 HxWx3) in the style of `style` (uint8 HxWx3). Deterministic
    given config.seed (and the thread count)."""
    config = config or StyleTransferConfig()
    started = time.perf_counter()
    network = feature_network(config.feature_network, config.seed, classifier_state)
    content = resize_long_side(to_tensor(content_uint8), config.size)
    style = resize_long_side(to_tensor(style_uint8), config.size)
    with torch.no_grad():
        style_targets = [gram_matrix(f) for f in style_features(network, style)]
        content_target = style_features(network, content)[-1]
    pixels = torch.atanh(content.clamp(-TANH_LIMIT, TANH_LIMIT)).requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=config.lr)

    def losses() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = torch.tanh(pixels)
        features = style_features(network, image)
        style_loss = sum(_relative_mse(gram_matrix(f), t) for f, t in zip(features, style_targets)) / len(features)
        return style_loss, _relative_mse(features[-1], content_target), total_variation(image)

    style_history, content_history = [], []
    for _ in range(config.steps):
        style_loss, content_loss, tv_loss = losses()
        loss = config.style_weight * style_loss + config.content_weight * content_loss + config.tv_weight * tv_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        style_history.append(style_loss.item())
        content_history.append(content_loss.item())
    with torch.no_grad():
        style_loss, content_loss, _ = losses()
    style_history.append(style_loss.item())
    content_history.append(content_loss.item())
    return StyleTransferResult(
        image=to_image(torch.tanh(pixels)),
        feature_network=network.description,
        style_losses=style_history,
        content_losses=content_history,
        seconds=time.perf_counter() - started,
        config=config.to_dict(),
    )


def _to_height(image: np.ndarray, height: int) -> np.ndarray:
    if image.shape[0] == height:
        return np.asarray(image, np.uint8)
    x = to_tensor(image)
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=height < image.shape[0])
    return to_image(x)


def triptych(content, style, result) -> np.ndarray:
    """content | style | result side by side at the result's height, as one uint8 image.
    `result` may be a StyleTransferResult or an image."""
    result = result.image if isinstance(result, StyleTransferResult) else result
    height = result.shape[0]
    panels = [_to_height(np.asarray(image), height) for image in (content, style, result)]
    gap = np.full((height, TRIPTYCH_GAP, panels[0].shape[2]), TRIPTYCH_BACKGROUND, np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
