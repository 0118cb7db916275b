"""`python -m tests.reliability._ingest_child RAW OUT`: the ingest a reliability test kills."""
from __future__ import annotations

import sys

from corpora.images import IMAGES, ImageCorpusConfig
from corpora.ingest import IngestSettings, ingest

CONFIG = ImageCorpusConfig(resolution=8)
# shard_megabytes=0: one row per shard, so a few hundred files make a few hundred shard files
SETTINGS = IngestSettings(workers=1, shard_megabytes=0)


def main(argv: list[str]) -> None:
    raw, out = argv[1], argv[2]
    report = ingest(IMAGES, CONFIG, raw, out, SETTINGS, progress=lambda message: None)
    print(report.version, flush=True)


if __name__ == "__main__":
    main(sys.argv)
