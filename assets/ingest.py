"""One ingest asset per corpus: raw files in data/raw/<corpus>/ become Parquet shards."""
import dagster as dg
import numpy as np

from assets.corpus_assets import GROUP, IngestConfig, corpus_check_specs, materialize_corpus
from corpora.images import IMAGES, ImageCorpusConfig
from corpora.ingest import IngestReport
from corpora.preview import contact_sheet, preview_png
from corpora.shards import read_shards, tensors_from_table
from resources.compute import ComputeResource
from resources.storage import StorageResource

PREVIEW_COUNT = 32


def _image_preview(report: IngestReport) -> bytes | None:
    paths = report.shard_paths("images")
    table = read_shards(paths[:1]).slice(0, PREVIEW_COUNT)
    if len(table) == 0:
        return None
    return preview_png(contact_sheet(tensors_from_table(table, "pixels"), cell=32))


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


@dg.asset(
    group_name=GROUP,
    code_version=IMAGES.code_version,
    kinds={"parquet", "pillow"},
    check_specs=corpus_check_specs("image_corpus"),
    description="Small images with their class (default: Fashion-MNIST, 70k PNGs) as square uint8 tensors.",
)
def image_corpus(
    context: dg.AssetExecutionContext, config: ImageIngestConfig, storage: StorageResource, compute: ComputeResource
) -> dg.MaterializeResult:
    return materialize_corpus(
        context, "images", IMAGES, config.corpus_config(), config, storage, compute, _image_preview
    )


@dg.asset(
    group_name=GROUP,
    code_version=IMAGES.code_version,
    kinds={"parquet", "pillow"},
    check_specs=corpus_check_specs("painting_corpus"),
    description="Colour pictures for the painting family (default: the photos bundled with scikit-image and scikit-learn).",
)
def painting_corpus(
    context: dg.AssetExecutionContext, config: PaintingIngestConfig, storage: StorageResource, compute: ComputeResource
) -> dg.MaterializeResult:
    return materialize_corpus(
        context, "painting", IMAGES, config.corpus_config(), config, storage, compute, _image_preview
    )


CORPUS_ASSETS = [image_corpus, painting_corpus]
