"""Video corpora: every file becomes fixed-length clips of small square frames at one frame rate.

Decoding uses PyAV, which raises on corrupt data where OpenCV silently returns fewer frames.
A truncated file can still decode without an
error (a cut Matroska or fragmented MP4 simply ends early), so the time the decoded frames
span is always compared with the frames the container reports: by time, not by count, because
a sparse stream (an AVI that stores a dropped frame as an empty packet) spans its whole length
with fewer frames than its header counts, and is whole. A file that decodes cleanly but
ends early (a damaged tail: a header that promises more frames than the stream holds) is, by
default, salvaged up to its last decoded frame when at least one whole clip remains, with a
`Notice` that says so; `damaged_tail="reject"` refuses it instead. A last packet cut short by
the end of the file ends the stream there (a damaged tail too); corrupt data anywhere else that
makes the decoder fail is always refused.

Frames are resampled to `fps` by presentation timestamp: output frame k shows the latest
source frame whose timestamp is at or before k / fps (counted from the first frame), which
works for both down- and up-sampling and for variable frame rates. Each frame is rotated as
the container's display matrix asks, centre-cropped to a square and resized with
`cv2.INTER_AREA`; the stream of frames is then cut into clips of `clip_frames`, one every
`clip_hop_frames`, and the tail shorter than a clip is dropped.

The module also writes browser-playable H.264 MP4 (`write_video`) for galleries.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np
import pyarrow as pa
from av.video.reformatter import VideoReformatter

from common.atomic import atomic_path
from corpora.images import square_resize, thumbnail
from corpora.ingest import DecodedFile, DecodeTask, Grouping, Modality, Notice, Rejected, TableRows
from corpora.shards import TableSpec, TensorColumn

EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov"})
TABLE = "clips"
TENSOR = "frames"
SIGNATURE_FRAMES = 3  # a clip is compared by thumbnails of its first, middle and last frames
# The two encodings of one scene in the default corpus (carphone pristine and distorted) are
# 7.0-8.7 apart per aligned clip; the closest clips of different scenes or digit videos, 37.
NEAR_IDENTICAL_RMS = 12.0
# Frames at least this large are decoded on FFmpeg's threads (1280x720 H.264: 2.6 ms a frame
# against 5.2 ms on one); smaller ones on the calling thread, where handing frames between
# threads costs more than it saves (64x64: 114 us against 220 us, 320x240: 272 us against 356 us).
THREADED_DECODE_PIXELS = 640 * 360


DAMAGED_TAIL_POLICIES = ("salvage", "reject")


@dataclass(frozen=True)
class VideoCorpusConfig:
    fps: float = 10.0  # every file is resampled to this frame rate
    resolution: int = 64  # square frames: centre crop, then resize
    channels: int = 3  # 3: RGB, 1: grayscale
    clip_frames: int = 20  # frames per clip (10 context + 10 future for the forecaster)
    clip_hop_frames: int = 20  # a clip starts every this many frames (= clip_frames: no overlap)
    max_frames_per_file: int = 3000  # resampled frames kept per file (5 min at 10 fps); bounds memory
    min_frame_ratio: float = 0.9  # frames spanning less than this share of the reported ones: a damaged tail
    damaged_tail: str = "salvage"  # "salvage": keep the frames before the damage (>= one clip), with a Notice; "reject"
    max_source_pixels: int = 7680 * 4320  # a stream whose frames are larger (8K UHD) is refused
    timestamp_tolerance_s: float = 0.001  # a frame this close after an output time still counts for it

    def __post_init__(self):
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, not {self.fps}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if self.resolution < 4:
            raise ValueError(f"resolution must be at least 4, not {self.resolution}")
        if self.clip_frames < 1 or self.clip_hop_frames < 1:
            raise ValueError("clip_frames and clip_hop_frames must be at least 1")
        if self.max_frames_per_file < self.clip_frames:
            raise ValueError(
                f"max_frames_per_file ({self.max_frames_per_file}) must hold one clip ({self.clip_frames})"
            )
        if not 0.0 <= self.min_frame_ratio <= 1.0:
            raise ValueError(f"min_frame_ratio must lie in [0, 1], not {self.min_frame_ratio}")
        if self.timestamp_tolerance_s < 0:
            raise ValueError("timestamp_tolerance_s must not be negative")
        if self.damaged_tail not in DAMAGED_TAIL_POLICIES:
            raise ValueError(f"damaged_tail must be one of {', '.join(DAMAGED_TAIL_POLICIES)}, not {self.damaged_tail!r}")


def table_specs(config: VideoCorpusConfig) -> list[TableSpec]:
    return [
        TableSpec(
            TABLE,
            TensorColumn(TENSOR, (config.clip_frames, config.resolution, config.resolution, config.channels), "uint8"),
            {
                "clip_index": pa.int32(),  # position of the clip within its file
                "start_time_s": pa.float64(),  # of its first frame, from the file's first frame
                "source_fps": pa.float64(),  # the container's average frame rate (0 if unknown)
                "source_width": pa.int32(),  # as displayed (after the display-matrix rotation)
                "source_height": pa.int32(),
                "reported_frames": pa.int32(),  # what the container claims; -1 if it says nothing
                "decoded_frames": pa.int32(),  # what the decoder actually returned
            },
        )
    ]


# --- decoding ---------------------------------------------------------------------------------


def _exact(value: float) -> Fraction:
    # Fraction("10.0") is 10 and Fraction("29.97") is 2997/100, where Fraction(29.97) is a binary approximation.
    return Fraction(str(value))


def _ffmpeg_reason(exc: Exception) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(reason)


def _error_type(exc: Exception) -> str:
    name = type(exc).__name__
    return name[: -len("Error")] if name.endswith("Error") and name != "Error" else name


_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"}


def _open_failure_hint(path: str) -> str:
    """Why FFmpeg could not open a file, as far as its first bytes tell."""
    try:
        with open(path, "rb") as file:
            head = file.read(12)
    except OSError:
        head = b""
    if head[4:8] in _MP4_BOXES:
        return (
            "an MP4/MOV file that cannot be opened, probably cut short: a plain MP4 keeps its "
            "index (the moov atom) at the end"
        )
    return "not a readable video container (unknown format or corrupt header)"


def reported_frame_count(stream, container) -> int | None:
    """Frames the container says the stream has: its frame count, else duration x rate; None if unknown."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        return None
    if stream.duration is not None and stream.time_base is not None:
        seconds = stream.duration * stream.time_base
    elif container.duration is not None:
        seconds = Fraction(container.duration, av.time_base)
    else:
        return None
    count = round(seconds * rate)
    return int(count) if count > 0 else None


def _to_array(frame: av.VideoFrame, channels: int, reformatter: VideoReformatter) -> np.ndarray:
    """An upright HxWxC uint8 array, rotated as the stream's display matrix asks.

    The pixels of `frame.to_ndarray(format=...)`, but through one reformatter for the whole
    stream (`to_ndarray` sets up a new swscale context for every frame) and on one thread:
    swscale's own threads cost more to start and join than converting a frame takes (64x64:
    400 us against 8 us), and ingest already runs one worker process per core.
    """
    pixels = reformatter.reformat(frame, format="rgb24" if channels == 3 else "gray", threads=1).to_ndarray()
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    quarter_turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # counter-clockwise, as FFmpeg means it
    if quarter_turns:
        pixels = np.rot90(pixels, quarter_turns)
    return pixels


@dataclass
class DecodedVideo:
    frames: np.ndarray  # (T, resolution, resolution, channels) uint8, resampled to config.fps
    source_fps: float
    source_width: int
    source_height: int
    reported_frames: int | None
    decoded_frames: int
    notices: list[Notice]


def decode_resampled(path: str, config: VideoCorpusConfig) -> DecodedVideo:
    """Decode one file and resample it to `config.fps`; raises Rejected for anything unusable."""
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise Rejected(f"{_open_failure_hint(path)}: {_ffmpeg_reason(exc)}", "decode", _error_type(exc)) from exc
    except OSError as exc:
        raise Rejected(f"cannot open the file: {exc}", "read", _error_type(exc)) from exc
    except UnicodeDecodeError as exc:
        # PyAV decodes the container's text fields (an MP4's brand, a title tag) as UTF-8 while
        # opening; bytes that are not UTF-8 there mean a damaged header, not a Python bug
        raise Rejected(
            f"not a readable container: its header holds text that is not UTF-8 ({exc.object[:16]!r})",
            "decode",
            "InvalidMetadata",
        ) from exc
    with container:
        if not container.streams.video:
            raise Rejected("the container holds no video stream", "decode", "NoVideoStream")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # PyAV gives no codec context for a codec FFmpeg does not know
            raise Rejected("no decodable video stream (unknown codec)", "decode", "UnknownCodec")
        coded_pixels = (stream.codec_context.width or 0) * (stream.codec_context.height or 0)
        if coded_pixels >= THREADED_DECODE_PIXELS:
            stream.thread_type = "AUTO"
        if coded_pixels > config.max_source_pixels:
            raise Rejected(
                f"frames of {stream.codec_context.width}x{stream.codec_context.height} exceed the limit of "
                f"{config.max_source_pixels:,} pixels",
                "validate",
                "TooLarge",
            )
        rate = stream.average_rate or stream.guessed_rate
        reported = reported_frame_count(stream, container)
        cut = []  # the packet that ends the file cut short, if one does
        frames, decoded, spanned_s, width, height = _resample(
            _frames_to_the_cut(container, stream, os.path.getsize(path), cut), stream.time_base, rate, config
        )
    if decoded == 0:
        raise Rejected("the video stream decoded to no frames", "decode", "NoFrames")
    notices = []
    # the span in source frames at the stream's rate (without timestamps, the decoded count)
    spanned = spanned_s * Fraction(rate) if rate else decoded
    if cut and (reported is None or spanned >= config.min_frame_ratio * reported):
        # no frame count to compare with, or no more frames lost than min_frame_ratio allows:
        # kept under either policy, as a file that ends early by a frame or two always was
        notices.append(Notice("validate", "DamagedTail", f"the last packet is cut short by the end of the file: "
                              f"salvaged up to its last good frame ({decoded} frames)"))
    elif reported is not None and spanned < config.min_frame_ratio * reported:
        mismatch = (f"decoded {decoded} frames spanning {float(spanned):.0f} frame times, but the container reports "
                    f"{reported} ({float(spanned) / reported:.0%} < {config.min_frame_ratio:.0%}): "
                    f"the file is truncated or damaged")
        if config.damaged_tail == "reject":
            raise Rejected(mismatch, "validate", "FrameCountMismatch")
        clips = len(clip_starts(len(frames), config.clip_frames, config.clip_hop_frames))
        if clips == 0:
            raise Rejected(f"{mismatch}, and the {len(frames)} frames before the damage at {config.fps:g} fps are "
                           f"fewer than one clip of {config.clip_frames}", "validate", "FrameCountMismatch")
        notices.append(Notice("validate", "DamagedTail", f"{mismatch}; salvaged up to its last good frame "
                              f"({float(spanned_s):.2f} s): {clips} clip{'s' if clips != 1 else ''}"))
    return DecodedVideo(frames, float(rate or 0.0), width, height, reported, decoded, notices)


def _frames_to_the_cut(container, stream, file_size: int, cut: list):
    """The stream's decoded frames (`container.decode(stream)`), except that a packet that fails
    to decode and reaches the end of the file (a file cut short inside its last frame) ends the
    stream there instead of raising: it is appended to `cut`, and the frames the decoder still
    holds are returned. Any other failure raises, as corrupt data inside the file does."""
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            if packet.pos is None or packet.pos < 0 or packet.pos + packet.size < file_size:
                raise
            cut.append(packet)
            break
        yield from frames
    if cut:
        try:
            yield from stream.decode(None)  # flush: frames held back for reordering
        except av.error.FFmpegError:
            pass


def _resample(decoded_frames, time_base, rate, config: VideoCorpusConfig):
    """Stream decoded frames into output frames at config.fps (the latest frame with pts <= k/fps).

    Only frames that are shown are converted and resized; once `max_frames_per_file` output
    frames are kept, the rest of the stream is still decoded (so truncation is still found)
    but nothing more is converted. Returns the frames, the count of decoded frames, the seconds
    they span (first frame to one source frame interval past the last), and the source's width
    and height.
    """
    step = 1 / _exact(config.fps)
    tolerance = _exact(config.timestamp_tolerance_s)
    fallback_step = 1 / Fraction(rate) if rate else step
    tick = Fraction(time_base) if time_base is not None else None
    # Every time below is a whole number of 1/scale seconds: as exact as Fractions, and a frame
    # costs a few integer operations instead of a dozen Fraction ones.
    scale = math.lcm(step.denominator, tolerance.denominator, fallback_step.denominator,
                     tick.denominator if tick is not None else 1)
    step, tolerance, fallback_step = (int(value * scale) for value in (step, tolerance, fallback_step))
    tick = int(tick * scale) if tick is not None else None
    kept: list[np.ndarray] = []
    limit = config.max_frames_per_file
    count = 0
    width = height = 0
    first_pts = last_time = None
    previous = None  # the latest decoded frame not yet superseded
    previous_pixels = None  # its converted pixels, once needed
    next_output = 0  # time of output frame len(kept), from the first frame

    reformatter = VideoReformatter()

    def show(frame):
        nonlocal previous_pixels, width, height
        if previous_pixels is None:
            pixels = _to_array(frame, config.channels, reformatter)
            height, width = pixels.shape[:2]
            previous_pixels = square_resize(pixels, config.resolution, enlarge_with=cv2.INTER_AREA)
        kept.append(previous_pixels)

    try:
        for frame in decoded_frames:
            count += 1
            pts = frame.pts
            if pts is not None and tick is not None:
                if first_pts is None:
                    first_pts = pts
                time = (pts - first_pts) * tick
            else:  # no timestamp: assume it follows the previous frame at the stream's rate
                time = 0 if last_time is None else last_time + fallback_step
            if last_time is not None and time < last_time:
                time = last_time  # out-of-order timestamps never move the clock backwards
            last_time = time
            if len(kept) >= limit:
                continue
            while previous is not None and next_output + tolerance < time and len(kept) < limit:
                show(previous)
                next_output = len(kept) * step
            previous, previous_pixels = frame, None
    except av.error.FFmpegError as exc:
        raise Rejected(
            f"the stream is corrupt after {count} frames: {_ffmpeg_reason(exc)}", "decode", _error_type(exc)
        ) from exc
    if previous is not None and len(kept) < limit:
        end = last_time + fallback_step  # the last frame is shown for one source frame interval
        while next_output + tolerance < end and len(kept) < limit:
            show(previous)
            next_output = len(kept) * step
    frames = np.stack(kept) if kept else np.empty((0, config.resolution, config.resolution, config.channels), np.uint8)
    spanned_s = Fraction(last_time + fallback_step, scale) if last_time is not None else Fraction(0)
    return frames, count, spanned_s, width, height


def clip_starts(num_frames: int, clip_frames: int, hop: int) -> list[int]:
    """First frame of every full clip; the tail shorter than a clip is dropped."""
    if num_frames < clip_frames:
        return []
    return list(range(0, num_frames - clip_frames + 1, hop))


def clip_signatures(clips: np.ndarray) -> np.ndarray:
    """(N, T, H, W, C) uint8 clips -> (N, SIGNATURE_FRAMES * 256) thumbnails of a few frames each."""
    picked = np.linspace(0, clips.shape[1] - 1, SIGNATURE_FRAMES).round().astype(int)
    return np.stack([np.concatenate([thumbnail(clip[t]) for t in picked]) for clip in clips])


def decode(task: DecodeTask) -> DecodedFile:
    config: VideoCorpusConfig = task.config
    if os.path.getsize(task.path) == 0:
        raise Rejected("the file has zero bytes", "read", "EmptyFile")
    video = decode_resampled(task.path, config)
    starts = clip_starts(len(video.frames), config.clip_frames, config.clip_hop_frames)
    if not starts:
        raise Rejected(
            f"{len(video.frames)} frames at {config.fps:g} fps ({len(video.frames) / config.fps:.2f} s) "
            f"are fewer than one clip of {config.clip_frames}",
            "validate",
            "TooShort",
        )
    clips = np.stack([video.frames[s : s + config.clip_frames] for s in starts])
    digest = hashlib.sha256()
    digest.update(repr(video.frames.shape).encode())
    digest.update(video.frames.tobytes())
    n = len(starts)
    return DecodedFile(
        content_hash=digest.hexdigest(),
        tables={
            TABLE: TableRows(
                tensors=clips,
                columns={
                    "clip_index": list(range(n)),
                    "start_time_s": [s / config.fps for s in starts],
                    "source_fps": [video.source_fps] * n,
                    "source_width": [video.source_width] * n,
                    "source_height": [video.source_height] * n,
                    "reported_frames": [video.reported_frames if video.reported_frames is not None else -1] * n,
                    "decoded_frames": [video.decoded_frames] * n,
                },
            )
        },
        signatures={TABLE: clip_signatures(clips)},
        time_spans=np.array([(s, s + config.clip_frames) for s in starts], dtype=np.int64),
        notices=video.notices,
    )


# One file a message: a file costs tens of milliseconds to seconds, so the workers finish together and
# each file's frames reach the cache while the next decodes (measured in docs/performance.md).
VIDEO = Modality("video", "video-2", EXTENSIONS, table_specs, decode, chunk_size=1,
                 grouping=Grouping(near_tables=(TABLE,), near_rms=NEAR_IDENTICAL_RMS, time_table=TABLE))


# --- reading and writing whole files (tests, galleries) -------------------------------------


def read_video_frames(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Every frame of the first video stream as (T, H, W, channels) uint8, upright, at its own rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        reformatter = VideoReformatter()
        frames = [_to_array(frame, channels, reformatter) for frame in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: the video stream decoded to no frames")
    return np.stack(frames)


# Macroblock-tree rate control makes libx264 (as the PyAV 18 wheel ships it) give a different
# bitstream for the same frames now and then (measured: 17 of 250 encodes of one 64x64 clip,
# depending on the state of the heap); without it, 250 of 250 were identical. A gallery or a
# default corpus written twice must be the same file, so it is off (a few percent more bytes).
X264_OPTIONS = {"x264-params": "mbtree=0", "preset": "medium"}


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, *, crf: int = 18) -> None:
    """Encode (T, H, W, C) uint8 frames (C = 1 or 3; or T, H, W) as a browser-playable H.264 MP4.

    libx264, yuv420p, `+faststart` (the index sits before the data, so a browser starts playing
    before the download ends). yuv420p needs even sizes: an odd height or width is padded by
    repeating the last row or column. Written to a temporary file beside `path`, fsynced, then
    renamed over it, so a reader never sees half a file.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or len(frames) == 0:
        raise ValueError(f"frames must be (T, H, W, 1 or 3) with T >= 1, not {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, not {frames.dtype}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, not {fps}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    height, width = frames.shape[1:3]

    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream(
                "libx264", rate=_exact(fps).limit_denominator(1_000_000), options=X264_OPTIONS | {"crf": str(crf)}
            )
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for pixels in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
