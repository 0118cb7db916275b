"""The PredRNN-V2 recurrence (Wang et al., "PredRNN: A Recurrent Neural Network for
Spatiotemporal Predictive Learning", TPAMI 2022): spatiotemporal LSTM (ST-LSTM) layers whose
spatiotemporal memory M zigzags through the stack, and the memory decoupling term.

Written from the paper's equations (docs/video-rnn.md): per layer l at time t, with X the
layer's input (the frame for l = 1, H of the layer below otherwise),

    g, i, f    = tanh, sigmoid, sigmoid of W_x * X + W_h * H^l_{t-1}
    C^l_t      = f * C^l_{t-1} + i * g                              (temporal memory)
    g', i', f' = tanh, sigmoid, sigmoid of W'_x * X + W_m * M^{l-1}_t
    M^l_t      = f' * M^{l-1}_t + i' * g'                           (spatiotemporal memory)
    o          = sigmoid(W_xo * X + W_ho * H^l_{t-1} + W_co * C^l_t + W_mo * M^l_t)
    H^l_t      = o * tanh(W_1x1 * [C^l_t, M^l_t])

where M^0_t is M^L_{t-1}: the bottom layer at t reads the top layer's memory of t-1. The
decoupling term is |cos| between W_d * (i * g) and W_d * (i' * g') (W_d one 1x1 conv shared by
all layers), per channel over the map, averaged.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.video_rnn.convlstm import FORGET_BIAS


class PredRnnState(NamedTuple):
    layers: list  # per layer (H, C)
    memory: torch.Tensor  # M of the top layer after the last step: the bottom layer's next input
    decoupling: torch.Tensor  # the decoupling term summed over the steps taken from a fresh state
    steps: int  # how many steps that sum covers


class SpatioTemporalLSTMCell(nn.Module):
    """One ST-LSTM layer. Its gates are convolutions of X, H and M (no bias on H and M: X's carries
    it, as one conv of the concatenation would)."""

    def __init__(self, in_channels: int, hidden: int, kernel: int):
        super().__init__()
        self.hidden = hidden
        pad = kernel // 2
        self.from_input = nn.Conv2d(in_channels, 7 * hidden, kernel, padding=pad)  # g i f, g' i' f', o
        self.from_hidden = nn.Conv2d(hidden, 4 * hidden, kernel, padding=pad, bias=False)  # g i f, o
        self.from_memory = nn.Conv2d(hidden, 3 * hidden, kernel, padding=pad, bias=False)  # g' i' f'
        self.output_from_memories = nn.Conv2d(2 * hidden, hidden, kernel, padding=pad, bias=False)  # W_co, W_mo
        self.fuse = nn.Conv2d(2 * hidden, hidden, 1, bias=False)  # W_1x1 on [C, M]
        with torch.no_grad():
            self.from_input.bias.zero_()
            self.from_input.bias[2 * hidden : 3 * hidden].fill_(FORGET_BIAS)  # f
            self.from_input.bias[5 * hidden : 6 * hidden].fill_(FORGET_BIAS)  # f'

    def forward(self, x: torch.Tensor, hc: tuple[torch.Tensor, torch.Tensor], memory: torch.Tensor):
        """-> H, C, M of this layer and the memory increments (i * g, i' * g')."""
        h, c = hc
        xg, xi, xf, xg2, xi2, xf2, xo = self.from_input(x).chunk(7, dim=1)
        hg, hi, hf, ho = self.from_hidden(h).chunk(4, dim=1)
        mg, mi, mf = self.from_memory(memory).chunk(3, dim=1)
        temporal = torch.sigmoid(xi + hi) * torch.tanh(xg + hg)
        c = torch.sigmoid(xf + hf) * c + temporal
        spatiotemporal = torch.sigmoid(xi2 + mi) * torch.tanh(xg2 + mg)
        memory = torch.sigmoid(xf2 + mf) * memory + spatiotemporal
        memories = torch.cat([c, memory], dim=1)
        o = torch.sigmoid(xo + ho + self.output_from_memories(memories))
        h = o * torch.tanh(self.fuse(memories))
        return h, c, memory, (temporal, spatiotemporal)


def decoupling_cosine(temporal: torch.Tensor, spatiotemporal: torch.Tensor) -> torch.Tensor:
    """Mean |cos| between the two increments, per sample and channel over the map."""
    return F.cosine_similarity(temporal.flatten(2), spatiotemporal.flatten(2), dim=2).abs().mean()


class PredRnnStack(nn.Module):
    """ST-LSTM layers of one width (M passes between them unchanged in shape); `step` advances one
    frame, with the same interface as ConvLSTMStack.step; the state is a PredRnnState."""

    def __init__(self, in_channels: int, hidden: Sequence[int], kernel: int):
        super().__init__()
        if len(set(hidden)) != 1:
            raise ValueError(f"PredRNN's memory flows through every layer: widths must be equal, not {tuple(hidden)}")
        width = hidden[0]
        widths = [in_channels, *hidden]
        self.cells = nn.ModuleList(SpatioTemporalLSTMCell(a, b, kernel) for a, b in zip(widths, widths[1:]))
        self.decouple = nn.Conv2d(width, width, 1, bias=False)  # W_d, shared by every layer

    def initial_state(self, x: torch.Tensor) -> PredRnnState:
        zeros = x.new_zeros(x.size(0), self.cells[0].hidden, x.size(2), x.size(3))
        return PredRnnState([(zeros, zeros)] * len(self.cells), zeros, zeros.new_zeros(()), 0)

    def step(self, x: torch.Tensor, state: PredRnnState | None = None) -> tuple[torch.Tensor, PredRnnState]:
        """x (B, C, h, w) -> top H (B, width, h, w) and the new state. The decoupling term is
        computed only in training mode (inference has no use for it)."""
        state = self.initial_state(x) if state is None else state
        memory, layers, decoupling = state.memory, [], state.decoupling
        for cell, hc in zip(self.cells, state.layers):
            h, c, memory, increments = cell(x, hc, memory)
            layers.append((h, c))
            if self.training:
                decoupling = decoupling + decoupling_cosine(*map(self.decouple, increments)) / len(self.cells)
            x = h
        return x, PredRnnState(layers, memory, decoupling, state.steps + 1)
