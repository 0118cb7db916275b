"""The video gallery's pictures, Dagster-free: context | truth | prediction panels
(`side_by_side`), looping GIFs (PIL) and the per-horizon error plot (matplotlib's Agg canvas, no
pyplot state). The MP4s are corpora.video.write_video."""
from __future__ import annotations

import io
import os
from typing import IO

import numpy as np

from models.video_rnn.frames import match_channels
from models.video_rnn.metrics import source_kind

GAP_PIXELS = 2  # between the side-by-side panels
GAP_CONTEXT = (96, 96, 96)  # gap colour while the context plays
GAP_FUTURE = (200, 40, 40)  # and while the future plays, so a viewer sees where prediction starts
PLOT_SIZE_INCHES, PLOT_DPI = (6.0, 3.2), 100


def gallery_clips(sources: list[str], count: int, seed: int) -> list[int]:
    """Indices of up to `count` held-out clips, never one twice: one clip of each source file
    first, the kinds of footage (source_kind) taken in turn so that real footage is among them
    when there is any, then further clips of the same files; the order within each is a seeded shuffle."""
    order = np.random.default_rng(seed).permutation(len(sources)).tolist()
    firsts: dict[str, int] = {}
    for index in order:
        firsts.setdefault(sources[index], index)
    by_kind: dict[str, list[int]] = {}
    for source, index in firsts.items():
        by_kind.setdefault(source_kind(source), []).append(index)
    queues = [by_kind[kind] for kind in sorted(by_kind)]
    interleaved = [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]
    chosen = set(interleaved)
    return (interleaved + [index for index in order if index not in chosen])[:count]


def error_plot_png(report: dict) -> bytes:
    """Per-step MSE (left) and SSIM (right) of the model and the copy-last baseline, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    steps = report["horizons"]
    for axis, metric, label in zip(figure.subplots(1, 2), ("mse", "ssim"), ("MSE per frame (sum)", "SSIM")):
        axis.plot(steps, report["model"][metric], marker="o", label="model (mean)")
        axis.plot(steps, report["baseline"][metric], marker="s", linestyle="--", label="copy last frame")
        axis.set_xlabel("future step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    figure.axes[0].legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _rgb(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"frames must be uint8 (T, H, W, C), got {frames.dtype} {frames.shape}")
    return match_channels(frames, 3)


def side_by_side(context, truth, prediction) -> np.ndarray:
    """Frames (M + max(K_truth, K_pred), H, 3W + 2*GAP_PIXELS, 3) uint8: context | truth | prediction.

    While the context plays, all three panels show the context frame (the gaps are gray);
    afterwards the left panel holds the last context frame, the others show the truth and the
    prediction (the gaps turn red). A panel with no frame for a step (truth shorter than the
    prediction, say) is black.
    """
    context, truth, prediction = _rgb(context), _rgb(truth), _rgb(prediction)
    height, width = context.shape[1:3]
    if truth.shape[1:3] != (height, width) or prediction.shape[1:3] != (height, width):
        raise ValueError("context, truth and prediction must have the same frame size")
    future = max(len(truth), len(prediction))
    frames = np.zeros((len(context) + future, height, 3 * width + 2 * GAP_PIXELS, 3), np.uint8)
    starts = [0, width + GAP_PIXELS, 2 * (width + GAP_PIXELS)]
    for t, frame in enumerate(context):
        for start in starts:
            frames[t, :, start : start + width] = frame
        _paint_gaps(frames[t], starts, width, GAP_CONTEXT)
    for k in range(future):
        out = frames[len(context) + k]
        out[:, : width] = context[-1]
        for panel, start in zip((truth, prediction), starts[1:]):
            if k < len(panel):
                out[:, start : start + width] = panel[k]
        _paint_gaps(out, starts, width, GAP_FUTURE)
    return frames


def _paint_gaps(frame: np.ndarray, starts: list[int], width: int, colour) -> None:
    for start in starts[1:]:
        frame[:, start - GAP_PIXELS : start] = colour


def write_gif(path_or_buffer: str | os.PathLike | IO[bytes] | None, frames, fps: float) -> bytes | None:
    """An animated, looping GIF of uint8 frames (T, H, W, C). With None, returns its bytes (the
    caller writes them, atomically); otherwise writes to the path (atomically) or file object and returns None."""
    from PIL import Image

    frames = _rgb(frames)
    if len(frames) == 0 or not fps > 0:
        raise ValueError("a GIF needs at least one frame and a positive fps")
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    data = buffer.getvalue()
    if path_or_buffer is None:
        return data
    if hasattr(path_or_buffer, "write"):
        path_or_buffer.write(data)
    else:
        from common.atomic import atomic_write_bytes  # gallery side only, never the pyfunc

        atomic_write_bytes(path_or_buffer, data)
    return None
