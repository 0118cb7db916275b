"""Compute settings: which device, how many CPU threads, which seed."""
from __future__ import annotations

import dagster as dg


class ComputeResource(dg.ConfigurableResource):
    """`threads` bounds both torch's intra-op threads and ingest worker processes.

    Pin it: an oversubscribed CPU ran training up to 10x slower (docs/performance.md).
    """

    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    threads: int = 2
    seed: int = 0
    compile: str = "off"  # torch.compile the training modules: "auto" (on CUDA), "on", "off"

    def training_settings(self) -> dict:
        """These settings as keyword arguments of a models.train.TrainingRequest (the seed goes in the model config)."""
        return {"device": self.device, "threads": self.threads, "trainer": {"compile": self.compile}}

    def torch_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def configure_torch(self):
        """Pin torch's thread count and return the device to train on."""
        import torch

        torch.set_num_threads(self.threads)
        return self.torch_device()
