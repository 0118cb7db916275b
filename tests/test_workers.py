"""The decoders' process pool: a worker that crashes or hangs costs only the item that did it,
every item is answered exactly once, and results are the function's own."""
from __future__ import annotations

import functools
import os
import time

from corpora.workers import ItemFailure, map_isolated

CRASHES, HANGS, RAISES = {5, 22}, {13}, {30}


def square_unless_marked(item: int, marker_dir: str) -> int:
    """item**2; but some items kill their process, hang, or raise. A hanging item leaves a marker
    file, which shows it was run rather than failed unseen."""
    if item in CRASHES:
        os._exit(3)
    if item in HANGS:
        open(os.path.join(marker_dir, f"hung-{item}"), "w").close()
        time.sleep(60)
    if item in RAISES:
        raise ValueError(f"item {item} is not squared")
    return item * item


def process_of(item: object) -> int:
    return os.getpid()


def test_crashes_hangs_and_errors_cost_only_their_own_items(tmp_path):
    items = list(range(48))
    fn = functools.partial(square_unless_marked, marker_dir=str(tmp_path))
    started = time.monotonic()
    answers: dict[int, object] = {}
    for index, result in map_isolated(fn, items, workers=2, timeout_s=1.0, chunk_size=4, preload=[__name__]):
        assert index not in answers, f"item {index} answered twice"
        answers[index] = result
    assert sorted(answers) == items
    for index, result in answers.items():
        if index in CRASHES | HANGS | RAISES:
            assert isinstance(result, ItemFailure), (index, result)
        else:
            assert result == index * index, (index, result)
    assert {answers[i].error_type for i in CRASHES} == {"WorkerCrashed"}
    assert {answers[i].error_type for i in HANGS} == {"Timeout"}
    assert answers[30].error_type == "ValueError" and "not squared" in answers[30].message
    assert (tmp_path / "hung-13").exists()
    # the hanging item's chunk timed out once (4 items x 1 s) and the item alone once more (1 s);
    # nowhere near its 60 s sleep
    assert time.monotonic() - started < 50


def test_a_few_items_are_shared_between_the_workers_whatever_the_chunk_size():
    # six slow files (a folder of long videos) in chunks of 16 would all go to one worker
    answers = dict(map_isolated(process_of, [None] * 6, workers=2, timeout_s=30.0, chunk_size=16,
                                preload=[__name__]))
    assert sorted(answers) == list(range(6))
    assert len(set(answers.values())) == 2, answers
