"""MLflow pyfunc of the video forecaster: what `mlflow.pyfunc.load_model("models:/video-rnn@champion")` runs.

Shipped with `code_paths=["models"]`, so it imports nothing outside models/ (no corpora/, no
dagster). Save one with:

    mlflow.pyfunc.save_model(path, python_model=VideoRnnPyfunc(),
                             artifacts={"bundle": "bundle.pt"}, code_paths=["models"])

Request (a dict, or a one-row DataFrame with these columns):
    {"context": uint8 frames (M, H, W, C) as a numpy array or nested lists (C = 1 or 3; (M, H, W)
     is one channel), "horizon": k (default: the trained horizon), "seed": 0,
     "mode": "mean" | "sample"}
-> uint8 frames (k, H, W, C) with the context's channel count. "sample" draws every pixel from
the PixelCNN head (about half a second per 64x64 frame on one CPU core), so its horizon is
capped lower than "mean"'s.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import mlflow.pyfunc
import numpy as np

DEFAULT_SEED, DEFAULT_MODE = 0, "mean"
MAX_HORIZON = {"mean": 1000, "sample": 100}  # one request must not be able to ask for unbounded work
MAX_PIXEL = 255


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _request(model_input) -> dict:
    """The request as a plain dict; the context stays whole (a dict's context is never indexed)."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # pandas DataFrame
        rows = model_input.to_dict(orient="records")
        if len(rows) != 1:
            raise ValueError(f"expected a one-row DataFrame, got {len(rows)} rows")
        return dict(rows[0])
    if isinstance(model_input, Mapping):
        return dict(model_input)
    if isinstance(model_input, (list, tuple)) and len(model_input) == 1 and isinstance(model_input[0], Mapping):
        return dict(model_input[0])
    raise TypeError(f"expected a dict or one-row DataFrame with context, horizon, seed, mode; got {type(model_input).__name__}")


def _scalar(value):
    # callers thinking in columns wrap scalars in one-element lists
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 1:
        return value[0]
    return value


def _context(value) -> np.ndarray:
    """Frames as uint8 (M, H, W, C) from an array or nested lists of integers in 0..255."""
    if _missing(value):
        raise ValueError("the request needs a 'context': uint8 frames (M, H, W, C)")
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = value.tolist()  # a DataFrame cell of nested arrays
    frames = np.asarray(value)
    if frames.dtype != np.uint8:
        if frames.dtype.kind not in "iuf" or frames.size == 0:
            raise ValueError(f"context must be numeric frames, got {frames.dtype}")
        if frames.min() < 0 or frames.max() > MAX_PIXEL or not np.array_equal(frames, np.round(frames)):
            raise ValueError("context values must be integers in 0..255")
        frames = frames.astype(np.uint8)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or len(frames) == 0:
        raise ValueError(f"context must be (M, H, W, C) with C in 1, 3 and M >= 1; got {frames.shape}")
    return frames


class VideoRnnPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from models.video_rnn import load_bundle, load_model

        self.model = load_model(load_bundle(context.artifacts["bundle"]))  # weights_only=True inside

    def predict(self, context, model_input, params=None):
        from models.video_rnn import predict

        request = _request(model_input)
        frames = _context(request.get("context"))
        mode = _scalar(request.get("mode"))
        mode = DEFAULT_MODE if _missing(mode) else str(mode)
        if mode not in MAX_HORIZON:
            raise ValueError(f"mode must be one of {sorted(MAX_HORIZON)}, not {mode!r}")
        horizon = _scalar(request.get("horizon"))
        horizon = self.model.config.horizon if _missing(horizon) else int(horizon)
        if not 0 <= horizon <= MAX_HORIZON[mode]:
            raise ValueError(f"horizon must lie in 0..{MAX_HORIZON[mode]} for mode {mode!r}")
        seed = _scalar(request.get("seed"))
        seed = DEFAULT_SEED if _missing(seed) else int(seed)
        return predict(self.model, frames, horizon=horizon, mode=mode, seed=seed)
