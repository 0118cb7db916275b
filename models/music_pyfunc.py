"""MLflow pyfunc of the music VAE: what `mlflow.pyfunc.load_model("models:/music-vae@champion")` runs.

Shipped with `code_paths=["models"]`, so it imports nothing outside models/ (no corpora/, no
dagster). Save one with:

    mlflow.pyfunc.save_model(path, python_model=MusicVaePyfunc(),
                             artifacts={"bundle": "bundle.pt"}, code_paths=["models"])

Requests (a dict, or a one-row DataFrame with these columns):
- {"n": 4, "seed": 0, "temperature": 1.0, "mode": "chorale"} -> a list of n MIDI files (bytes);
- {"interpolate": [midi_a, midi_b], "steps": 5, "mode": ...} -> a list of `steps` MIDI files
  from phrase a to phrase b (both encoded, latents slerped, each decoded greedily).
"mode" defaults to the bundle's first model ("melody" or "chorale").
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import mlflow.pyfunc
import numpy as np

DEFAULT_N, DEFAULT_SEED, DEFAULT_TEMPERATURE, DEFAULT_STEPS = 4, 0, 1.0, 5
MAX_N = 1024  # one request must not be able to ask for unbounded work


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _request(model_input) -> dict:
    """The request as a plain dict. Unlike the image pyfunc, list values stay lists: the
    interpolation endpoints are a list of two MIDI files."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # pandas DataFrame
        rows = model_input.to_dict(orient="records")
        return dict(rows[0]) if rows else {}
    if isinstance(model_input, Mapping):
        return dict(model_input)
    if isinstance(model_input, (list, tuple)) and model_input and isinstance(model_input[0], Mapping):
        return dict(model_input[0])
    raise TypeError(f"expected a dict or DataFrame with n, seed, temperature or interpolate; got {type(model_input).__name__}")


def _scalar(value):
    # a dict request may wrap scalars in one-element lists, as DataFrame-minded callers do
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 1:
        return value[0]
    return value


class MusicVaePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from models.music_vae import load_bundle, load_model

        bundle = load_bundle(context.artifacts["bundle"])  # weights_only=True inside
        self.models = {kind: load_model(bundle, kind) for kind in bundle["models"]}
        self.default_mode = next(iter(bundle["models"]))
        self.qpm = float(bundle["tokens"].get("qpm", 120.0))

    def _model(self, mode):
        mode = self.default_mode if _missing(mode) else str(mode)
        if mode not in self.models:
            raise ValueError(f"mode {mode!r} is not in this model; it has {sorted(self.models)}")
        return self.models[mode]

    def predict(self, context, model_input, params=None):
        from models.music_vae import interpolate, midi_bytes_to_tokens, sample, tokens_to_midi_bytes

        request = _request(model_input)
        model = self._model(_scalar(request.get("mode")))
        voices, steps_per_window = model.config.voices, model.config.steps_per_window
        ends = request.get("interpolate")
        if ends is not None and not (isinstance(ends, float) and math.isnan(ends)):
            ends = list(ends)
            if len(ends) != 2:
                raise ValueError("interpolate needs exactly two MIDI files (bytes)")
            steps = DEFAULT_STEPS if _missing(_scalar(request.get("steps"))) else int(_scalar(request["steps"]))
            a, b = (midi_bytes_to_tokens(bytes(end), voices, steps_per_window) for end in ends)
            windows = interpolate(model, a, b, steps=min(steps, MAX_N))
        else:
            n = DEFAULT_N if _missing(_scalar(request.get("n"))) else int(_scalar(request["n"]))
            seed = DEFAULT_SEED if _missing(_scalar(request.get("seed"))) else int(_scalar(request["seed"]))
            temperature = _scalar(request.get("temperature"))
            temperature = DEFAULT_TEMPERATURE if _missing(temperature) else float(temperature)
            if not 0 <= n <= MAX_N:
                raise ValueError(f"n must be within 0..{MAX_N}")
            windows = sample(model, n, seed=seed, temperature=temperature)
        return [tokens_to_midi_bytes(window, self.qpm) for window in windows]
