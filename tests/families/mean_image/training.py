"""How the test family trains: `run_training`, as `python -m models.train --family mean-image` calls it."""
from __future__ import annotations

import torch

from mean_image.model import BUNDLE_FORMAT, MeanImage, MeanImageConfig
from models.batches import InMemoryRows
from models.bundle import save_bundle


class MeanImageFamily:
    def __init__(self, config: MeanImageConfig, pixels):
        self.config = config
        self.pixels = torch.as_tensor(pixels).float().div(255)
        self.rows = InMemoryRows({"pixels": self.pixels})
        torch.manual_seed(config.seed)
        self.model = MeanImage(tuple(self.pixels.shape[1:]))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)

    def modules(self):
        return {"model": self.model}

    def optimizers(self):
        return {"model": self.optimizer}

    def schedulers(self):
        return {}

    def to(self, device, channels_last: bool) -> None:
        self.model.to(device)

    def make_batch(self, columns, device):
        return columns["pixels"].to(device)

    def train_step(self, batch, step: int, autocast) -> dict[str, float]:
        # a Gaussian's negative log-likelihood: the mean goes to the data's mean, the noise to its spread
        std = self.model.log_std.exp()
        loss = (((batch - self.model.mean) / std) ** 2 / 2 + self.model.log_std).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}


def benchmark_family(manifest, profile: str):
    """A fresh family on the manifest's training pictures, for bench/gpu.py."""
    from corpora.readers import read_split

    pixels = read_split(manifest, "images", ["pixels"])["train"]["pixels"]

    def make(steps: int):
        config = MeanImageConfig.profile(profile, steps=steps)
        return MeanImageFamily(config, pixels), config

    return make


def run_training(request, run):
    from corpora.readers import read_split
    from models.train import TrainingOutcome

    split = read_split(run.manifest, "images", ["pixels"])
    config = MeanImageConfig.from_dict(request.model_config)
    family = MeanImageFamily(config, split["train"]["pixels"])
    result = run.fit(family, config, request)
    bundle = save_bundle({"format": BUNDLE_FORMAT, "shape": list(family.pixels.shape[1:]),
                          "state_dict": family.model.state_dict()}, run.run_dir / "bundle.pt")
    heldout = torch.as_tensor(split["heldout"]["pixels"]).float().div(255)
    mse = float(((heldout - family.model.mean.detach()) ** 2).mean()) if len(heldout) else float("nan")
    return TrainingOutcome(bundle=str(bundle), checkpoint=str(result.checkpoint), step=result.step,
                           resumed_from=result.resumed_from, train_seconds=result.seconds, score=mse,
                           summary={"heldout_mse": mse}, report_markdown=f"held-out MSE of the mean picture: {mse:.5f}")
