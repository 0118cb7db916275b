"""A corpus decoded in parts: each part is a run of its own (a step per corpus), the corpus
asset then decodes nothing and commits the version a single-step ingest makes."""
from __future__ import annotations

import dagster as dg

from assets.ingest import CORPUS_ASSET_OF, DECODE_PARTS, PART_ASSET_OF
from pipelines.definitions import build_resources
from tests.conftest import data_version_of, materialization_metadata
from tests.reliability._media import write_pngs

image_corpus = CORPUS_ASSET_OF["images"]
image_corpus_parts = PART_ASSET_OF["images"]

CONFIG = {"resolution": 12, "heldout_percent": 30}


def test_parts_fill_the_cache_and_the_corpus_commits_the_single_step_version(tmp_path):
    raw = tmp_path / "raw"
    write_pngs(raw, 40, seed=7)
    config = {**CONFIG, "source_dir": str(raw)}
    parted, single = tmp_path / "parted", tmp_path / "single"
    instance = dg.DagsterInstance.ephemeral()

    decoded = 0
    for key in DECODE_PARTS.get_partition_keys():
        result = dg.materialize([image_corpus_parts], partition_key=key, instance=instance,
                                resources=build_resources(str(parted)),
                                run_config={"ops": {"image_corpus_parts": {"config": config}}})
        assert result.success
        metadata = materialization_metadata(result, image_corpus_parts)
        decoded += metadata["decoded_this_run"]
    assert decoded == 40  # every file in exactly one part

    def commit(data_root):
        result = dg.materialize([image_corpus], instance=instance, resources=build_resources(str(data_root)),
                                run_config={"ops": {"image_corpus": {"config": config}}})
        assert result.success
        return result

    after_parts = commit(parted)
    assert materialization_metadata(after_parts, image_corpus)["files_decoded_this_run"] == 0
    assert materialization_metadata(after_parts, image_corpus)["ingested"] == 40
    fresh = commit(single)
    assert materialization_metadata(fresh, image_corpus)["files_decoded_this_run"] == 40
    assert data_version_of(after_parts, image_corpus) == data_version_of(fresh, image_corpus)
