"""The gated PixelCNN head (van den Oord et al. 2016) and its pixel-by-pixel sampler.

The head gives each pixel a distribution over the quantized levels: a mixture of discretized
Gaussians around the forecast mean and the previous frame, and the PixelCNN's softmax
(docs/video-rnn.md says why). `sample_frame` draws a frame in raster order with row-cached
vertical features and a per-pixel horizontal step, exactly the full forward's logits.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRIOR_PRECISION = 0.5  # the head's Gaussian components start one level wide: -0.5 * (level - centre)^2
PRIOR_CENTRES = 2  # Gaussian components of the head's mixture: around the forecast mean and the previous frame


def gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class PixelCnnHead(nn.Module):
    """Gated PixelCNN with vertical and horizontal stacks, on (N, 1, H, W) maps (sub-pixels).

    The vertical features at row i see only rows above i; the horizontal features at (i, j)
    see row i left of j and the vertical features at (i, j). The first layer's convolutions
    exclude the current row (vertical) and pixel (horizontal), the "mask A" of PixelCNN; later
    layers include the current position of their input, which already excludes it ("mask B").
    Masking is done by padding and kernel shape, so no weight is ever masked out.
    """

    def __init__(self, cond_channels: int, width: int, layers: int, first_kernel: int, kernel: int, levels: int):
        super().__init__()
        self.levels, self.width, self.layers = levels, width, layers
        self.first_reach, self.reach = first_kernel // 2, kernel // 2
        r0, r = self.first_reach, self.reach
        self.v_convs = nn.ModuleList([nn.Conv2d(1, 2 * width, (r0, 2 * r0 + 1))] +
                                     [nn.Conv2d(width, 2 * width, (r + 1, 2 * r + 1)) for _ in range(layers - 1)])
        self.h_convs = nn.ModuleList([nn.Conv2d(1, 2 * width, (1, r0))] +
                                     [nn.Conv2d(width, 2 * width, (1, r + 1)) for _ in range(layers - 1)])
        self.v_to_h = nn.ModuleList(nn.Conv2d(width, 2 * width, 1) for _ in range(layers))
        self.h_out = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.cond = nn.Conv2d(cond_channels, layers * 4 * width, 1)  # per layer: vertical, horizontal biases
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, levels, 1))
        # per pixel: the weights of the mixture's components (Gaussians first, PixelCNN last) and
        # the Gaussians' precisions; they start equal and one level wide
        self.mixture = nn.Conv2d(cond_channels, 2 * PRIOR_CENTRES + 1, 1)
        nn.init.zeros_(self.mixture.weight)
        nn.init.zeros_(self.mixture.bias)
        nn.init.constant_(self.mixture.bias[PRIOR_CENTRES + 1 :], math.log(math.expm1(PRIOR_PRECISION)))  # softplus^-1
        self.register_buffer("level_grid", torch.arange(levels, dtype=torch.float32).view(1, 1, levels, 1, 1),
                             persistent=False)

    @property
    def rows_above(self) -> int:
        """How many rows above a pixel its logits depend on."""
        return self.first_reach + self.reach * (self.layers - 1)

    @property
    def cols_left(self) -> int:
        """How many pixels to its left (same row) its logits depend on through the horizontal stack."""
        return self.first_reach + self.reach * (self.layers - 1)

    def embed(self, levels_index: torch.Tensor) -> torch.Tensor:
        """Level indices -> the head's input scale [-1, 1]."""
        return levels_index.float() * (2.0 / (self.levels - 1)) - 1.0

    def condition(self, cond: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer vertical and horizontal gate biases (N, 2*width, H, W) from the conditioning map."""
        parts = self.cond(cond).chunk(2 * self.layers, dim=1)
        return list(parts[0::2]), list(parts[1::2])

    def vertical(self, x: torch.Tensor, cond_v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Vertical features of every layer for the rows of x (any window of whole rows)."""
        rows = x.size(2)
        features, v = [], x
        for layer, conv in enumerate(self.v_convs):
            kh, kw = conv.kernel_size
            above = kh if layer == 0 else kh - 1  # layer 0: strictly above; later: up to the same row
            v = gate(conv(F.pad(v, (kw // 2, kw // 2, above, 0)))[:, :, :rows] + cond_v[layer])
            features.append(v)
        return features

    def row_biases(self, vertical: Sequence[torch.Tensor], cond_h: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """What the horizontal stack adds before each gate: the vertical link plus the conditioning."""
        return [link(v) + c for link, v, c in zip(self.v_to_h, vertical, cond_h)]

    def horizontal(self, x: torch.Tensor, biases: Sequence[torch.Tensor]) -> torch.Tensor:
        """The horizontal stack's last features for x (any window of columns, ending at the target)."""
        cols = x.size(3)
        h = x
        for layer, (conv, out) in enumerate(zip(self.h_convs, self.h_out)):
            kw = conv.kernel_size[1]
            left = kw if layer == 0 else kw - 1  # layer 0: strictly left; later: up to the same pixel
            update = out(gate(conv(F.pad(h, (left, 0, 0, 0)))[..., :cols] + biases[layer]))
            h = update if layer == 0 else h + update
        return h

    def prior(self, cond: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The parts of the mixture that depend on no pixel of the frame: the log of the weighted
        Gaussians' sum (N, levels, H, W) around `centres` (N, PRIOR_CENTRES, H, W) in [0, 1], and the
        PixelCNN component's log weight (N, 1, H, W)."""
        params = self.mixture(cond).float()
        log_weights = F.log_softmax(params[:, : PRIOR_CENTRES + 1], dim=1)
        precision = F.softplus(params[:, PRIOR_CENTRES + 1 :])[:, :, None]
        gaussians = -precision * (self.level_grid - centres.float()[:, :, None] * (self.levels - 1)) ** 2
        weighted = log_weights[:, :PRIOR_CENTRES, None] + F.log_softmax(gaussians, dim=2)
        return weighted.logsumexp(dim=1), log_weights[:, PRIOR_CENTRES:]

    def forward(self, x: torch.Tensor, cond: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """x (N, 1, H, W) on the input scale, cond (N, D, H, W), centres (N, PRIOR_CENTRES, H, W)
        -> log-probabilities (N, levels, H, W) of the mixture (usable as logits)."""
        cond_v, cond_h = self.condition(cond)
        biases = self.row_biases(self.vertical(x, cond_v), cond_h)
        prior, log_weight = self.prior(cond, centres)
        pixel_cnn = F.log_softmax(self.out(self.horizontal(x, biases)).float(), dim=1)
        return torch.logaddexp(prior, log_weight + pixel_cnn)


def gumbel_noise(shape: Sequence[int], generator: torch.Generator, device) -> torch.Tensor:
    """Gumbel(0, 1) noise: argmax(logits + noise) is a sample of softmax(logits)."""
    uniform = torch.rand(*shape, generator=generator).clamp_min(torch.finfo(torch.float32).tiny)
    return (-torch.log(-torch.log(uniform))).to(device)


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_gate(x: np.ndarray) -> np.ndarray:
    a, b = np.split(x, 2, axis=-1)
    return np.tanh(a) * (0.5 * np.tanh(0.5 * b) + 0.5)  # sigmoid(b) = (1 + tanh(b/2)) / 2


class _RowSampler:
    """The horizontal stack of one row, advanced one pixel at a time.

    Each layer keeps a buffer of its input along the row (padded on the left with the zeros the
    full forward's padding supplies), so a pixel costs one small matrix product per layer:
    layer l's output at column j needs only columns j-reach..j of layer l-1, all computed
    already. This is the full forward's arithmetic on the same numbers, reordered. It runs in
    numpy: on vectors this small a torch call's dispatch costs more than the maths, and numpy's
    is several times smaller (docs/video-rnn.md).
    """

    def __init__(self, head: "PixelCnnHead", n: int, width: int):
        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        # conv (2F, C_in, 1, kw) -> (kw*C_in, 2F), matching a (N, kw, C_in) window flattened
        self.in_weights = [array(conv.weight[:, :, 0].permute(2, 1, 0).flatten(0, 1)) for conv in head.h_convs]
        self.in_biases = [array(conv.bias) for conv in head.h_convs]
        self.out_weights = [(array(out.weight.flatten(1).t()), array(out.bias)) for out in head.h_out]
        _, first, _, last = head.out  # ReLU, 1x1, ReLU, 1x1
        self.final = [(array(first.weight.flatten(1).t()), array(first.bias)), (array(last.weight.flatten(1).t()), array(last.bias))]
        self.kernel_widths = [conv.kernel_size[1] for conv in head.h_convs]
        # layer 0 sees strictly left of a pixel (pad = kw), later layers up to it (pad = kw - 1)
        self.pads = [kw if i == 0 else kw - 1 for i, kw in enumerate(self.kernel_widths)]
        channels = [1] + [head.width] * (head.layers - 1)
        self.buffers = [np.zeros((n, width + pad, c), np.float32) for c, pad in zip(channels, self.pads)]

    def start_row(self, biases: Sequence[torch.Tensor]) -> None:
        """biases: per layer (N, 2F, 1, W), the vertical link plus conditioning for this row."""
        self.columns = [b[:, :, 0].permute(2, 0, 1).float().cpu().numpy() + bias  # (W, N, 2F)
                        for b, bias in zip(biases, self.in_biases)]
        for buffer in self.buffers:
            buffer.fill(0.0)

    def logits(self, j: int) -> np.ndarray:
        """(N, levels) logits at column j; the pixel's value must be `put` before asking for j+1."""
        h = None
        for layer, (weight, (out_weight, out_bias)) in enumerate(zip(self.in_weights, self.out_weights)):
            window = self.buffers[layer][:, j : j + self.kernel_widths[layer]]  # columns j-pad .. j-pad+kw-1
            pre = window.reshape(len(window), -1) @ weight + self.columns[layer][j]
            update = _np_gate(pre) @ out_weight + out_bias
            h = update if h is None else h + update
            if layer + 1 < len(self.buffers):
                self.buffers[layer + 1][:, j + self.pads[layer + 1]] = h
        for weight, bias in self.final:
            h = np.maximum(h, 0.0) @ weight + bias
        return h

    def put(self, j: int, value: np.ndarray) -> None:
        self.buffers[0][:, j + self.pads[0], 0] = value


@torch.no_grad()
def sample_frame(head: PixelCnnHead, cond: torch.Tensor, centres: torch.Tensor, generator: torch.Generator,
                 return_logits: bool = False,
                 force: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample (N, H, W) level indices pixel by pixel in raster order from the head's inputs
    cond (N, D, H, W) and centres (N, PRIOR_CENTRES, H, W).

    Each row's vertical features are computed once from the `rows_above` rows above it; then
    the horizontal stack advances one pixel at a time (see _RowSampler). With `return_logits`,
    also the (N, levels, H, W) logits each pixel was drawn from. With `force` (N, H, W) level
    indices, each pixel is set to the forced level instead of a drawn one: the same path then
    scores a given frame (its logits are the likelihood's, pixel by pixel).
    """
    n, _, height, width = cond.shape
    cond_v, cond_h = (list(map(Tensor.cpu, parts)) for parts in head.condition(cond))
    x = torch.zeros(n, 1, height, width)
    chosen = np.zeros((n, height, width), np.int64)
    noise = gumbel_noise((height, width, n, head.levels), generator, "cpu").numpy() if force is None else None
    forced = force.cpu().numpy() if force is not None else None
    prior, log_weight = (part.permute(2, 3, 0, 1).cpu().numpy() for part in head.prior(cond, centres))  # (H, W, N, .)
    seen = np.zeros((height, width, n, head.levels), np.float32) if return_logits else None
    scale = 2.0 / (head.levels - 1)  # head.embed, in numpy
    row, pixels = _RowSampler(head, n, width), x.numpy()
    cpu_head = head if cond.device.type == "cpu" else copy.deepcopy(head).cpu()
    for i in range(height):
        top = max(0, i - head.rows_above)
        vertical = cpu_head.vertical(x[:, :, top : i + 1], [c[:, :, top : i + 1] for c in cond_v])
        row.start_row(cpu_head.row_biases([v[:, :, -1:] for v in vertical], [c[:, :, i : i + 1] for c in cond_h]))
        for j in range(width):
            logits = np.logaddexp(prior[i, j], log_weight[i, j] + _np_log_softmax(row.logits(j)))
            level = (logits + noise[i, j]).argmax(axis=1) if forced is None else forced[:, i, j]
            value = level * scale - 1.0
            row.put(j, value)
            chosen[:, i, j] = level
            pixels[:, 0, i, j] = value
            if seen is not None:
                seen[i, j] = logits
    logits_seen = torch.from_numpy(seen).permute(2, 3, 0, 1).to(cond.device) if seen is not None else None
    return torch.from_numpy(chosen).to(cond.device), logits_seen
