"""MLflow pyfunc of the video forecaster: what `mlflow.pyfunc.load_model("models:/video-rnn@champion")` runs.

Shipped with the family record's code paths (models/ and common/), so it imports nothing else of
this project (no corpora/, no dagster). Save one with:

    mlflow.pyfunc.save_model(path, python_model=VideoRnnPyfunc(), artifacts={"bundle": "bundle.pt"},
                             code_paths=FAMILY.code_paths())

Request (a dict, or a one-row DataFrame with these columns):
    {"context": uint8 frames (M, H, W, C) as a numpy array or nested lists (C = 1 or 3; (M, H, W)
     is one channel), "horizon": k (default: the trained horizon), "seed": 0,
     "mode": "mean" | "sample", "with_context": False}
-> uint8 frames (k, H, W, C) with the context's channel count; with "with_context", the context
(at the model's resolution) first: (M + k, H, W, C).

Without a "context", {"n": n, "seed": s, ...} continues the first n of the example contexts the
bundle keeps (held-out clips at the model's channels and resolution; cycling when n is larger;
n defaults to all of them) -> uint8 (n, k, H, W, C), or (n, M + k, H, W, C) with "with_context".
"sample" draws every pixel from the PixelCNN head (about half a second per 64x64 frame on one
CPU core), so its horizon is capped lower than "mean"'s.
"""
from __future__ import annotations

import numpy as np

from models.requests import RequestPyfunc, flag, missing, request_dict, scalar

DEFAULT_SEED, DEFAULT_MODE = 0, "mean"
MAX_HORIZON = {"mean": 1000, "sample": 100}  # one request must not be able to ask for unbounded work
MAX_CLIPS = 64  # example contexts continued by one request
MAX_PIXEL = 255


def _context(value) -> np.ndarray:
    """Frames as uint8 (M, H, W, C) from an array or nested lists of integers in 0..255."""
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


class VideoRnnPyfunc(RequestPyfunc):
    def load_context(self, context):
        from models.video_rnn.sampling import bundle_examples, load_bundle, load_model

        bundle = load_bundle(context.artifacts["bundle"])  # weights_only=True inside
        self.model = load_model(bundle)
        self.examples = bundle_examples(bundle)  # None for a bundle of format 2
        self.fps = bundle.get("fps")  # the frame rate of the corpus it was trained on

    def predict(self, context, model_input, params=None):
        from models.video_rnn.sampling import continue_clips, example_contexts

        request = request_dict(model_input, "context, horizon, seed, mode (or n, seed, mode)")
        mode = scalar(request.get("mode"))
        mode = DEFAULT_MODE if missing(mode) else str(mode)
        if mode not in MAX_HORIZON:
            raise ValueError(f"mode must be one of {sorted(MAX_HORIZON)}, not {mode!r}")
        horizon = scalar(request.get("horizon"))
        horizon = self.model.config.horizon if missing(horizon) else int(horizon)
        if not 0 <= horizon <= MAX_HORIZON[mode]:
            raise ValueError(f"horizon must lie in 0..{MAX_HORIZON[mode]} for mode {mode!r}")
        seed = scalar(request.get("seed"))
        seed = DEFAULT_SEED if missing(seed) else int(seed)
        with_context = flag(request.get("with_context"), "with_context")
        if not missing(request.get("context")):
            frames = _context(request["context"])
        else:  # a context-less request continues the bundle's example contexts
            n = scalar(request.get("n"))
            if missing(n):
                n = len(self.examples) if self.examples is not None else 1
            elif not 1 <= int(n) <= MAX_CLIPS:
                raise ValueError(f"n must lie in 1..{MAX_CLIPS}, not {n}")
            frames = example_contexts(self.examples, int(n))  # refuses a bundle without examples
        return continue_clips(self.model, frames, horizon=horizon, mode=mode, seed=seed, with_context=with_context)
