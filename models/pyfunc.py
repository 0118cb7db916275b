"""MLflow pyfunc wrappers: what `mlflow.pyfunc.load_model("models:/image-gan@champion")` runs.

Shipped with `code_paths=["models"]`, so it must import nothing outside models/ (no corpora/,
no dagster). Save one with:

    mlflow.pyfunc.save_model(path, python_model=ImageGanPyfunc(),
                             artifacts={"bundle": "bundle.pt"}, code_paths=["models"])
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import mlflow.pyfunc
import numpy as np

DEFAULT_N, DEFAULT_SEED = 16, 0


def _first_row(model_input) -> dict:
    """The request as a plain dict: a DataFrame's first row, a dict of scalars or of lists."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # pandas DataFrame
        rows = model_input.to_dict(orient="records")
        return dict(rows[0]) if rows else {}
    if isinstance(model_input, Mapping):
        return {k: (v[0] if isinstance(v, (list, tuple, np.ndarray)) and len(v) else v) for k, v in model_input.items()}
    if isinstance(model_input, (list, tuple)) and model_input and isinstance(model_input[0], Mapping):
        return dict(model_input[0])
    raise TypeError(f"expected a DataFrame or dict with keys n, seed, label; got {type(model_input).__name__}")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class ImageGanPyfunc(mlflow.pyfunc.PythonModel):
    """predict({n=16, seed=0, label=None, interpolate_to=None}) -> uint8 images (n, H, W, C).

    `label` is a class index or class name (conditional models; default: every class in
    turn). With `interpolate_to` (a second seed), the n images are a latent interpolation
    strip from `seed` to it instead of independent samples.
    """

    def load_context(self, context):
        from models.image_gan import load_bundle, load_generator

        bundle = load_bundle(context.artifacts["bundle"])  # weights_only=True inside
        self.generator = load_generator(bundle)
        self.class_names = list(bundle.get("class_names", []))

    def _label_index(self, label):
        if _missing(label):
            return None
        if isinstance(label, str):
            if label in self.class_names:
                return self.class_names.index(label)
            if not label.strip().lstrip("-").isdigit():
                raise ValueError(f"unknown class {label!r}; classes: {self.class_names}")
        return int(label)

    def predict(self, context, model_input, params=None):
        from models.image_gan import interpolate, sample

        request = _first_row(model_input)
        n = DEFAULT_N if _missing(request.get("n")) else int(request["n"])
        seed = DEFAULT_SEED if _missing(request.get("seed")) else int(request["seed"])
        label = self._label_index(request.get("label"))
        if not _missing(request.get("interpolate_to")):
            return interpolate(self.generator, seed, int(request["interpolate_to"]), steps=n, label_a=label)
        return sample(self.generator, n, seed, labels=label)
