"""MLflow pyfunc of the painting GAN: what `mlflow.pyfunc.load_model("models:/painting-gan@champion")` runs.

Registered with the family's code paths (models/ and common/), so it imports nothing else of
this project (no corpora/, no dagster). Save one with:

    mlflow.pyfunc.save_model(path, python_model=PaintingGanPyfunc(), artifacts={"bundle": "bundle.pt"},
                             code_paths=FAMILY.code_paths())

Requests (a dict, or a one-row DataFrame with these columns):
- {"n": 16, "seed": 0, "truncation_psi": 1.0} -> uint8 samples (n, H, W, 3);
- {"mix": [seed_a, seed_b], "crossover": layer, "truncation_psi": 1.0} -> uint8 (1, H, W, 3):
  seed_a's coarse styles (layers < crossover) with seed_b's fine ones. Without "crossover",
  a row (L+1, H, W, 3) for crossover = 0..L (L = the number of style layers): from seed_b's
  image to seed_a's.
"""
from __future__ import annotations

import numpy as np

from models.requests import RequestPyfunc, missing, request_dict, scalar

DEFAULT_N, DEFAULT_SEED, DEFAULT_PSI = 16, 0, 1.0
MAX_N = 1024  # one request must not be able to ask for unbounded work
REQUEST_KEYS = "n, seed, truncation_psi, or mix and crossover"


def _mix_seeds(request: dict) -> list[int] | None:
    """The two seeds of a "mix" request: a list, tuple or numpy array, possibly wrapped once
    more by a DataFrame-minded caller ([[a, b]])."""
    value = request.get("mix")
    if value is None or (np.ndim(value) == 0 and missing(value)):
        return None
    seeds = np.asarray(value, dtype=np.int64).reshape(-1)
    if seeds.size != 2:
        raise ValueError(f"mix needs exactly two seeds [seed_a, seed_b], got {value!r}")
    return [int(seeds[0]), int(seeds[1])]


def _value(request: dict, key: str, default, kind):
    value = scalar(request.get(key))
    return default if missing(value) else kind(value)


class PaintingGanPyfunc(RequestPyfunc):
    def load_context(self, context):
        from models.painting_gan.sampling import load_bundle, load_generator

        self.generator = load_generator(load_bundle(context.artifacts["bundle"]))  # weights_only=True inside

    def predict(self, context, model_input, params=None):
        from models.painting_gan.sampling import num_style_layers, sample, style_mix

        request = request_dict(model_input, REQUEST_KEYS)
        psi = _value(request, "truncation_psi", DEFAULT_PSI, float)
        mix = _mix_seeds(request)
        if mix is not None:
            crossover = _value(request, "crossover", None, int)
            if crossover is None:
                layers = range(num_style_layers(self.generator) + 1)
                return np.concatenate([style_mix(self.generator, *mix, layer, psi) for layer in layers])
            return style_mix(self.generator, *mix, crossover, psi)
        n = _value(request, "n", DEFAULT_N, int)
        seed = _value(request, "seed", DEFAULT_SEED, int)
        if not 0 <= n <= MAX_N:
            raise ValueError(f"n must be within 0..{MAX_N}")
        return sample(self.generator, n, seed=seed, truncation_psi=psi)
