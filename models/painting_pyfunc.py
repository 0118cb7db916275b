"""MLflow pyfunc of the painting GAN: what `mlflow.pyfunc.load_model("models:/painting-gan@champion")` runs.

Shipped with `code_paths=["models"]`, so it imports nothing outside models/ (no corpora/, no
dagster). Save one with:

    mlflow.pyfunc.save_model(path, python_model=PaintingGanPyfunc(),
                             artifacts={"bundle": "bundle.pt"}, code_paths=["models"])

Requests (a dict, or a one-row DataFrame with these columns):
- {"n": 16, "seed": 0, "truncation_psi": 1.0} -> uint8 samples (n, H, W, 3);
- {"mix": [seed_a, seed_b], "crossover": layer, "truncation_psi": 1.0} -> uint8 (1, H, W, 3):
  seed_a's coarse styles (layers < crossover) with seed_b's fine ones. Without "crossover",
  a row (L+1, H, W, 3) for crossover = 0..L (L = the number of style layers): from seed_b's
  image to seed_a's.
"""
from __future__ import annotations

from collections.abc import Mapping

import mlflow.pyfunc
import numpy as np

from models.pyfunc import _first_row, _missing

DEFAULT_N, DEFAULT_SEED, DEFAULT_PSI = 16, 0, 1.0
MAX_N = 1024  # one request must not be able to ask for unbounded work


def _mix_seeds(model_input) -> list[int] | None:
    """The two seeds of a "mix" request, from a dict or a DataFrame cell; a list, tuple or
    numpy array, possibly wrapped once more by a DataFrame-minded caller ([[a, b]])."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        if "mix" not in model_input.columns or not len(model_input):
            return None
        value = model_input["mix"].iloc[0]
    elif isinstance(model_input, Mapping):
        value = model_input.get("mix")
    else:
        value = _first_row(model_input).get("mix")
    if value is None or (np.ndim(value) == 0 and _missing(value)):
        return None
    seeds = np.asarray(value, dtype=np.int64).reshape(-1)
    if seeds.size != 2:
        raise ValueError(f"mix needs exactly two seeds [seed_a, seed_b], got {value!r}")
    return [int(seeds[0]), int(seeds[1])]


class PaintingGanPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from models.painting_gan import load_bundle, load_generator

        self.generator = load_generator(load_bundle(context.artifacts["bundle"]))  # weights_only=True inside

    def predict(self, context, model_input, params=None):
        from models.painting_gan import num_style_layers, sample, style_mix

        request = _first_row(model_input)
        psi = DEFAULT_PSI if _missing(request.get("truncation_psi")) else float(request["truncation_psi"])
        mix = _mix_seeds(model_input)
        if mix is not None:
            if _missing(request.get("crossover")):
                layers = range(num_style_layers(self.generator) + 1)
                return np.concatenate([style_mix(self.generator, *mix, crossover, psi) for crossover in layers])
            return style_mix(self.generator, *mix, int(request["crossover"]), psi)
        n = DEFAULT_N if _missing(request.get("n")) else int(request["n"])
        seed = DEFAULT_SEED if _missing(request.get("seed")) else int(request["seed"])
        if not 0 <= n <= MAX_N:
            raise ValueError(f"n must be within 0..{MAX_N}")
        return sample(self.generator, n, seed=seed, truncation_psi=psi)
