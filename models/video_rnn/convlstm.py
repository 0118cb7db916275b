"""The forecaster's recurrence: ConvLSTM layers (Shi et al. 2015, without peepholes, as PredRNN)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

FORGET_BIAS = 1.0  # LSTM forget gates start open (Jozefowicz et al. 2015)


class ConvLSTMCell(nn.Module):
    """One ConvLSTM layer (Shi et al. 2015, without peepholes): every gate is a convolution of
    [input, h]. The state is an explicit (h, c) pair; None means zeros."""

    def __init__(self, in_channels: int, hidden: int, kernel: int):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel, padding=kernel // 2)
        with torch.no_grad():
            self.gates.bias.zero_()
            self.gates.bias[hidden : 2 * hidden].fill_(FORGET_BIAS)

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = x.new_zeros(x.size(0), self.hidden, x.size(2), x.size(3))
        return zeros, zeros

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        h, c = self.initial_state(x) if state is None else state
        i, f, g, o = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTMStack(nn.Module):
    """ConvLSTM layers on top of each other; `step` advances one frame, `forward` a sequence."""

    def __init__(self, in_channels: int, hidden: Sequence[int], kernel: int):
        super().__init__()
        widths = [in_channels, *hidden]
        self.cells = nn.ModuleList(ConvLSTMCell(a, b, kernel) for a, b in zip(widths, widths[1:]))

    def step(self, x: torch.Tensor, states: list | None = None) -> tuple[torch.Tensor, list]:
        """x (B, C, h, w) -> top hidden state (B, hidden[-1], h, w), new per-layer (h, c) states."""
        states = states if states is not None else [None] * len(self.cells)
        new_states = []
        for cell, state in zip(self.cells, states):
            h, c = cell(x, state)
            new_states.append((h, c))
            x = h
        return x, new_states

    def forward(self, xs: torch.Tensor, states: list | None = None) -> tuple[torch.Tensor, list]:
        """xs (B, T, C, h, w) -> top hidden states (B, T, hidden[-1], h, w), the final states."""
        outputs = []
        for t in range(xs.size(1)):
            out, states = self.step(xs[:, t], states)
            outputs.append(out)
        return torch.stack(outputs, dim=1), states
