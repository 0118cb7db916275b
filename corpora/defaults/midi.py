"""The default MIDI corpus: the Bach chorales bundled with music21, exported as .mid files.

music21's chorale iterator lists 371 chorales in Riemenschneider order, but some
harmonisations appear under two numbers and point at the same file: each file is
exported once (350 with music21 10.x). Parsing a chorale takes music21 ~0.2-0.4 s, so the
export runs in worker processes; a chorale that fails to parse or export is logged and
skipped. A chorale whose repeat marks music21 cannot expand (bwv277) is exported played
once through, without its repeats. Nothing is downloaded.
"""
from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
from pathlib import Path

from corpora.atomic import atomic_write_bytes

WORKERS = 2
CHUNK_SIZE = 4

log = logging.getLogger(__name__)


def chorale_names() -> list[str]:
    """music21 corpus paths of the chorales ('bach/bwv269', ...), each once, in Riemenschneider order."""
    from music21 import corpus

    return list(dict.fromkeys(corpus.chorales.Iterator(returnType="filename")))


def file_name(chorale: str) -> str:
    return f"{chorale.rsplit('/', 1)[-1]}.mid"  # 'bach/bwv248.12-2' -> 'bwv248.12-2.mid'


def export_chorale(chorale: str, folder: str) -> tuple[str, str | None, str | None]:
    """Parse one chorale and write it as MIDI into `folder`.

    Returns (chorale, file name, None) when written, (chorale, None, error) when skipped.
    """
    try:
        from music21 import bar, corpus, repeat
        from music21.midi import translate

        score = corpus.parse(chorale)
        try:
            data = translate.streamToMidiFile(score).writestr()
        except repeat.ExpanderException:  # badly formed repeat marks: play it once through
            for mark in list(score.recurse().getElementsByClass((bar.Repeat, repeat.RepeatExpression))):
                mark.activeSite.remove(mark)
            data = translate.streamToMidiFile(score).writestr()
        if not data:
            raise ValueError("music21 wrote an empty MIDI file")
        name = file_name(chorale)
        atomic_write_bytes(Path(folder) / name, data)
        return chorale, name, None
    except Exception as exc:  # noqa: BLE001 - one bad chorale must not stop the corpus
        return chorale, None, f"{type(exc).__name__}: {exc}"


def write_default_corpus(folder: Path, limit: int | None = None, workers: int = WORKERS) -> int:
    """Export the music21 Bach chorales (the first `limit` of them, if given) into `folder`.

    Returns the number of .mid files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = chorale_names()
    if limit is not None:
        names = names[: max(limit, 0)]
    if not names:
        return 0
    written = 0
    # forkserver, not fork: this may run inside a threaded process (Dagster), where fork is unsafe
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, min(workers, len(names))), mp_context=context) as pool:
        results = pool.map(export_chorale, names, [str(folder)] * len(names), chunksize=CHUNK_SIZE)
        for chorale, name, error in results:
            if name is not None:
                written += 1
            else:
                log.warning("skipping chorale %s: %s", chorale, error)
    log.info("wrote %d of %d music21 Bach chorales as MIDI into %s", written, len(names), folder)
    return written
