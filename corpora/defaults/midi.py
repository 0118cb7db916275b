"""The default MIDI corpus: the Bach chorales bundled with music21, exported as .mid files.

music21's chorale iterator lists 371 chorales in Riemenschneider order, but some
harmonisations appear under two numbers and point at the same file: each file is
exported once (350 with music21 10.x). Parsing a chorale takes music21 ~0.2-0.4 s, so the
export runs in worker processes; a chorale that fails to parse or export is logged and
skipped. A chorale whose repeat marks music21 cannot expand (bwv277) is exported played
once through, without its repeats. Nothing is downloaded.

music21 writes a chorale that opens with a pickup from the pickup's first note, under a 4/4
(or 3/4) time signature at tick 0, so the file's bar lines fall a beat or more off the
music's. So each file starts with the missing part of the pickup bar as silence, and its
time signatures are rewritten from the score's measures: music21 restates the signature
where a repeat is played again, which after a pickup is mid-bar, and a bar cut short before
a repeat (or an overfull one) gets a signature of its own length. Every downbeat of the
music is then a bar line of the file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_bytes
from corpora.defaults import SEEDING_WORKERS, map_in_workers

CHUNK_SIZE = 4

log = logging.getLogger(__name__)


def chorale_names() -> list[str]:
    """music21 corpus paths of the chorales ('bach/bwv269', ...), each once, in Riemenschneider order."""
    from music21 import corpus

    return list(dict.fromkeys(corpus.chorales.Iterator(returnType="filename")))


def file_name(chorale: str) -> str:
    return f"{chorale.rsplit('/', 1)[-1]}.mid"  # 'bach/bwv248.12-2' -> 'bwv248.12-2.mid'


def export_chorale(chorale: str, folder: str) -> tuple[str, str | None, str | None]:
    """Parse one chorale and write it as MIDI into `folder`, with bar lines where the music has them.

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
        data = with_bar_lines(data, bar_lines(score))
        name = file_name(chorale)
        atomic_write_bytes(Path(folder) / name, data)
        return chorale, name, None
    except Exception as exc:  # noqa: BLE001 - one bad chorale must not stop the corpus
        return chorale, None, f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class BarLines:
    """Where a score's bars start, as its MIDI file should say it."""

    leading_rest: Fraction  # quarters of silence before the music: the part of a pickup bar it does not fill
    signatures: list[tuple[Fraction, int, int]]  # (quarters from the file's start, numerator, denominator)


def bar_lines(score) -> BarLines:
    """The bars of a score's first part played with its repeats (as music21's MIDI export
    plays it), as time signatures at the bar lines where they change.

    A measure that starts inside its bar (a pickup, or the rest of a bar split by a repeat
    mark) has music21's `paddingLeft`: its bar starts that much earlier. Two short measures
    played one after the other that together fill a bar are one bar. A bar that lasts
    other than its time signature says (one cut short before a repeat, or an overfull one)
    gets a signature of its own length, so the bar lines after it stay right.
    """
    from music21 import meter, stream

    part = score.parts.first() if score.parts else score
    measures = list(part.expandRepeats().getElementsByClass(stream.Measure))
    if not measures:
        return BarLines(Fraction(0), [])
    leading_rest = Fraction(measures[0].paddingLeft)
    nominal: dict[Fraction, meter.TimeSignature] = {}  # downbeat -> the time signature in effect there
    current = measures[0].timeSignature or meter.TimeSignature("4/4")
    previous, downbeat = None, Fraction(0)
    for measure in measures:
        current = measure.timeSignature or current
        start = leading_rest + Fraction(measure.offset)
        # a bar written as two short measures (a repeat sign or section end between them), played straight on
        split_bar = (
            previous is not None and not measure.paddingLeft and start == downbeat + _played(previous)
            and _played(previous) + _played(measure) == _bar(previous)
        )
        if not split_bar:
            downbeat = start - Fraction(measure.paddingLeft)
        nominal.setdefault(downbeat, current)
        previous = measure
    downbeats = sorted(nominal)
    signatures: list[tuple[Fraction, int, int]] = []
    for index, downbeat in enumerate(downbeats):
        signature = nominal[downbeat]
        numerator, denominator = signature.numerator, signature.denominator
        if index + 1 < len(downbeats):  # the last bar may end early: the piece just stops
            length = downbeats[index + 1] - downbeat
            if length != Fraction(signature.barDuration.quarterLength):
                numerator, denominator = _signature_of_length(length, denominator)
        if not signatures or signatures[-1][1:] != (numerator, denominator):
            signatures.append((downbeat, numerator, denominator))
    return BarLines(leading_rest, signatures)


def _played(measure) -> Fraction:
    return Fraction(measure.duration.quarterLength)


def _bar(measure) -> Fraction:
    """The length of a whole bar under the measure's time signature."""
    return Fraction(measure.barDuration.quarterLength)


def _signature_of_length(quarters: Fraction, denominator: int) -> tuple[int, int]:
    """The time signature of a bar `quarters` long, in `denominator`ths or finer: 3 quarters -> 3/4."""
    while (quarters * denominator / 4).denominator != 1:
        denominator *= 2
    return int(quarters * denominator / 4), denominator


def with_bar_lines(data: bytes, bars: BarLines) -> bytes:
    """A MIDI file's music moved `bars.leading_rest` later, and its time signatures replaced by
    `bars.signatures`; the opening tempo and key signature stay at tick 0."""
    import symusic

    score = symusic.Score.from_midi(data)
    tpq = score.ticks_per_quarter
    rest_ticks = round(bars.leading_rest * tpq)
    if rest_ticks:
        score = score.shift_time(rest_ticks)
        for events in (score.tempos, score.key_signatures):
            if len(events) and events[0].time == rest_ticks:
                events[0].time = 0  # the opening tempo and key hold over the leading rest
    if bars.signatures:
        time, numerator, denominator = zip(*bars.signatures)
        score.time_signatures = symusic.core.TimeSignatureTickList.from_numpy(
            np.array([round(t * tpq) for t in time], dtype=np.int32),
            np.array(numerator, dtype=np.uint8),
            np.array(denominator, dtype=np.uint8),
        )
    return score.dumps_midi()


def write_default_corpus(folder: Path, limit: int | None = None, workers: int = SEEDING_WORKERS) -> int:
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
    results = map_in_workers(export_chorale, names, [str(folder)] * len(names), count=len(names), workers=workers,
                             chunksize=CHUNK_SIZE)
    for chorale, name, error in results:
        if name is not None:
            written += 1
        else:
            log.warning("skipping chorale %s: %s", chorale, error)
    log.info("wrote %d of %d music21 Bach chorales as MIDI into %s", written, len(names), folder)
    return written
