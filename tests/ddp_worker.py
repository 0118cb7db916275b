"""One rank of a data-parallel test run, launched by tests/test_distributed.py through torchrun:

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.ddp_worker \\
        FAMILY RUN_DIR OUT_DIR STEPS [--rank1-stops-after N]

Trains FAMILY ("regression" or "music_vae") on CPU with gloo into RUN_DIR and writes
OUT_DIR/rank-<r>.pt: the rank's final module states, its fit result and how many times it
wrote a checkpoint or called log. `RegressionFamily` is also used in-process by the test as
the single-process reference.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.batches import InMemoryRows

NUM_ITEMS = 32
SPECIAL_ITEMS = 2  # items 0 and 1 alone use RegressionFamily.special_bias


class RegressionModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        # only in the graph when the slice holds a special item: some ranks get a gradient, some None
        self.special_bias = nn.Parameter(torch.zeros(1))
        # never in the graph: must keep None and so its value, although AdamW decays the rest
        self.unused = nn.Parameter(torch.ones(3))
        # updated from each rank's own slice, like BatchNorm statistics: the ranks' values drift apart
        self.register_buffer("target_mean", torch.zeros(1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.body(inputs)


class RegressionFamily:
    """A deterministic family: fixed data, no randomness in a step, AdamW with weight decay."""

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(NUM_ITEMS, 4, generator=generator)
        self.targets = self.inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(NUM_ITEMS, 1, generator=generator)
        self.rows = InMemoryRows({"inputs": self.inputs, "targets": self.targets,
                                  "special": torch.arange(NUM_ITEMS) < SPECIAL_ITEMS})
        torch.manual_seed(seed)
        self.model = RegressionModel()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.05, weight_decay=0.1)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def schedulers(self) -> dict:
        return {}

    def to(self, device: torch.device, channels_last: bool) -> None:
        self.model.to(device)

    def make_batch(self, columns: dict[str, torch.Tensor], device: torch.device):
        return columns["inputs"], columns["targets"], columns["special"]

    def train_step(self, batch, step: int, autocast) -> dict[str, float]:
        inputs, targets, special = batch
        predictions = self.model(inputs)  # through __call__, which torch.compile replaces
        if special.any():
            predictions = predictions + self.model.special_bias * special[:, None]
        loss = F.mse_loss(predictions, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.model.target_mean.lerp_(targets.mean(), 0.5)
        return {"loss": loss.item()}


def trainer_config(steps: int, batch_size: int = 8):
    from models.trainer import TrainerConfig

    return TrainerConfig(steps=steps, batch_size=batch_size, checkpoint_every=1, log_every=1, keep_checkpoints=100,
                         seed=7, bf16="off")


def build(name: str, steps: int):
    if name == "regression":
        return RegressionFamily(), trainer_config(steps)
    from tests.reliability._families import build as build_reliability_family

    family, config = build_reliability_family("music_vae")  # the real chorale VAE, tiny, batch 8
    config.steps, config.checkpoint_every, config.log_every, config.keep_checkpoints = steps, 1, 1, 100
    return family, config


def disturb(family, rank: int) -> None:
    """Give ranks other than 0 other initial weights: only the trainer's broadcast undoes this."""
    if rank == 0:
        return
    with torch.no_grad():
        for module in family.modules().values():
            for parameter in module.parameters():
                parameter.add_(1.0)


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("family", choices=["regression", "music_vae"])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--rank1-stops-after", type=int, default=None, help="rank 1 alone asks to stop after N steps")
    args = parser.parse_args()

    from models import distributed, trainer

    ranks = distributed.from_environment("cpu")
    family, config = build(args.family, args.steps)
    disturb(family, ranks.rank)

    saves = []
    write_checkpoint = trainer.save_checkpoint

    def counting_save(path, state, keep=None):  # a spy: the real write still happens
        saves.append(Path(path).name)
        return write_checkpoint(path, state, keep)

    trainer.save_checkpoint = counting_save
    logged = []
    checks = [0]

    def should_stop() -> bool:
        checks[0] += 1
        return ranks.rank == 1 and args.rank1_stops_after is not None and checks[0] > args.rank1_stops_after

    try:
        result = trainer.fit(family, config, args.run_dir, distributed=ranks, should_stop=should_stop,
                             log=lambda step, metrics: logged.append(step))
    finally:
        distributed.shutdown(ranks)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"modules": {name: module.state_dict() for name, module in family.modules().items()},
                "step": result.step, "finished": result.finished, "resumed_from": result.resumed_from,
                "saves": saves, "logged": logged, "items_per_second": result.metrics.get("items_per_second")},
               args.out_dir / f"rank-{ranks.rank}.pt")


if __name__ == "__main__":
    main()
