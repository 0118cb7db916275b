"""Run a decoder over many files in worker processes, with a time limit per file.

Native decoders (MIDI, video) can hang or crash the process on a malformed file. Files are
sent to workers in chunks (cheap), and a chunk whose worker crashes or overruns its time is
split and its files retried one at a time, so the culprit is found and everything else in
the chunk is still decoded. Each worker is sent its next chunk before it finishes the one it is
on, so it never waits for the caller (who writes results to disk between chunks) to send one.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any


@dataclass(frozen=True)
class ItemFailure:
    """Why one item produced no result."""

    stage: str
    error_type: str
    message: str


def failure_from_exception(exc: BaseException) -> ItemFailure:
    return ItemFailure(
        stage=getattr(exc, "stage", "decode"),
        error_type=getattr(exc, "error_type", None) or type(exc).__name__,
        message=str(exc) or repr(exc),
    )


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    try:
        return fn(item)
    except Exception as exc:  # noqa: BLE001 - any decoder error rejects this one file
        return failure_from_exception(exc)


def _worker_main(conn: Connection, fn: Callable[[Any], Any]) -> None:
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        chunk_id, items = message
        conn.send((chunk_id, [_call(fn, item) for item in items]))


@dataclass
class _Chunk:
    indices: Sequence[int]
    isolated: bool  # a single file being retried on its own


_CHUNKS_PER_WORKER = 2  # the chunk a worker is on and the next, so it never waits for one
# A worker's next chunk goes out only while its message is this small: it then waits in the
# pipe's buffer (64 KiB or more) without blocking the sender, who must stay free to read results.
_QUEUED_MESSAGE_MAX_BYTES = 16 << 10


class _Worker:
    def __init__(self, ctx, fn):
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child_conn, fn), daemon=True)
        self.process.start()
        child_conn.close()
        self.chunks: deque[tuple[int, _Chunk]] = deque()  # (chunk id, chunk) sent, the one it is on first
        self.deadline = float("inf")  # of the chunk it is on

    def send(self, chunk_id: int, chunk: _Chunk, items: Sequence[Any], timeout_s: float) -> bool:
        """Send `chunk`, unless the worker is busy and the message is too large to queue."""
        message = ForkingPickler.dumps((chunk_id, [items[i] for i in chunk.indices]))
        if self.chunks and len(message) > _QUEUED_MESSAGE_MAX_BYTES:
            return False
        if not self.chunks:
            self.deadline = time.monotonic() + timeout_s * len(chunk.indices)
        self.chunks.append((chunk_id, chunk))
        try:
            self.conn.send_bytes(message)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died on the chunk before: its sentinel says so, and its chunks go back to pending
        return True

    def finished_chunk(self, timeout_s: float) -> _Chunk:
        """The chunk it was on, now done; it has started the next one it was sent."""
        _, chunk = self.chunks.popleft()
        if self.chunks:
            self.deadline = time.monotonic() + timeout_s * len(self.chunks[0][1].indices)
        return chunk

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                self.process.kill()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _set_preload(fn: Callable[[Any], Any], preload: Sequence[str]) -> None:
    # Workers fork from a server that has already imported the decoder's module, so a
    # replacement worker (after a crash) starts in milliseconds rather than re-importing.
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        sorted({getattr(fn, "__module__", "functools"), *preload}))


def start_fork_server(fn: Callable[[Any], Any], preload: Sequence[str] = ()) -> None:
    """Start the fork server of `map_isolated` now without waiting for its imports, so they
    run beside the caller's own work instead of delaying the first worker."""
    _set_preload(fn, preload)
    multiprocessing.forkserver.ensure_running()


def stop_fork_server() -> None:
    """Stop the fork server, and so free the memory of its imports, until a decode needs it again."""
    multiprocessing.forkserver._forkserver._stop()  # private (multiprocessing's own tests call it): there is no public way


def map_isolated(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    workers: int,
    timeout_s: float,
    chunk_size: int = 16,
    start_method: str = "forkserver",
    preload: Sequence[str] = (),
) -> Iterator[tuple[int, Any]]:
    """Yield `(index, fn(items[index]) or ItemFailure)` for every item, in completion order.

    `fn` must be importable (a module-level function, or a partial of one; name the modules
    its work needs in `preload`). An exception inside `fn` becomes an
    ItemFailure for that item; a crash or a timeout of the worker does too, after retrying
    the other items of its chunk.
    """
    if not items:
        return
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        _set_preload(fn, preload)
    # a few files must not all go to one worker in one chunk: every worker gets its two chunks
    chunk_size = max(1, min(chunk_size, -(-len(items) // (max(1, workers) * _CHUNKS_PER_WORKER))))
    pending: deque[_Chunk] = deque(
        _Chunk(range(start, min(start + chunk_size, len(items))), isolated=chunk_size == 1)  # a range: no int per item
        for start in range(0, len(items), chunk_size)
    )
    pool = [_Worker(ctx, fn) for _ in range(max(1, min(workers, len(pending))))]
    next_chunk_id = 0
    outstanding = len(items)

    def retry_or_fail(worker: _Worker, reason: ItemFailure) -> list[tuple[int, Any]]:
        _, chunk = worker.chunks.popleft()
        pending.extendleft(queued for _, queued in reversed(worker.chunks))  # never started: sent again as they are
        worker.chunks.clear()
        if chunk.isolated:
            return [(chunk.indices[0], reason)]
        pending.extendleft(_Chunk([index], isolated=True) for index in reversed(chunk.indices))
        return []

    try:
        while outstanding:
            for position, worker in enumerate(pool):
                if not worker.chunks and pending and not worker.process.is_alive():
                    worker.stop(kill=True)
                    pool[position] = worker = _Worker(ctx, fn)
                while len(worker.chunks) < _CHUNKS_PER_WORKER and pending:
                    if not worker.send(next_chunk_id, pending[0], items, timeout_s):
                        break
                    pending.popleft()
                    next_chunk_id += 1

            busy = [w for w in pool if w.chunks]
            wait_for = min(w.deadline for w in busy) - time.monotonic()
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], max(0.0, wait_for))

            finished: list[tuple[int, Any]] = []
            for position, worker in enumerate(pool):
                if not worker.chunks:
                    continue
                if worker.conn in ready:
                    try:
                        chunk_id, results = worker.conn.recv()
                    except (EOFError, OSError):
                        chunk_id, results = None, None
                    if chunk_id == worker.chunks[0][0]:
                        finished += zip(worker.finished_chunk(timeout_s).indices, results)
                        continue
                if worker.conn in ready or worker.process.sentinel in ready:
                    worker.process.join(timeout=1)
                    code = worker.process.exitcode
                    failure = ItemFailure("decode", "WorkerCrashed", f"decoder process died (exit code {code})")
                    finished += retry_or_fail(worker, failure)
                    worker.stop(kill=True)
                    pool[position] = _Worker(ctx, fn)
                elif time.monotonic() >= worker.deadline:
                    failure = ItemFailure("decode", "Timeout", f"decoding took longer than {timeout_s:g} s")
                    finished += retry_or_fail(worker, failure)
                    worker.stop(kill=True)
                    pool[position] = _Worker(ctx, fn)
            for index, result in finished:
                outstanding -= 1
                yield index, result
    finally:
        for worker in pool:
            worker.stop(kill=bool(worker.chunks))
