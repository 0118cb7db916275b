"""Where a training asset's run happens: a process of its own behind Dagster Pipes, or this one.

Every training asset hands a `TrainingRequest` to `TrainerLauncher.launch` and gets back what
the run reported. The asset never knows which way it ran, so moving training elsewhere (a
Kubernetes pod through `dagster_k8s.PipesK8sClient`, docs/deploy.md section 3) means a
launcher whose `run_pipes` starts a pod, not a change to any asset.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster_pipes import PipesDefaultMessageWriter

from common.atomic import atomic_write_text
from models.train import Reporter, TrainingOutcome, TrainingRequest, train

MODES = ("subprocess", "in_process")
REQUEST_FILE = "request.json"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TrainingReport:
    """What one run reported: its outcome, and every metric window it logged (step, values)."""

    outcome: TrainingOutcome
    metrics: list[tuple[int, dict]] = field(default_factory=list)


class _CollectingReporter(Reporter):
    """The in-process run's reporter: log lines to the Dagster log, the rest kept for the asset."""

    def __init__(self, log):
        self.dagster_log, self.windows, self.result = log, [], None

    def log(self, message: str) -> None:
        self.dagster_log.info(message)

    def metrics(self, step: int, values: dict) -> None:
        self.dagster_log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
        self.windows.append((step, values))

    def outcome(self, outcome: TrainingOutcome) -> None:
        self.result = outcome


class WholeLineMessageReader(dg.PipesMessageReader):
    """Pipes messages through a temporary file, as Dagster's PipesTempFileMessageReader, but
    parsed only once their line is whole.

    Dagster's reader tails the file with `readline()`, which returns the part of a line that
    the child has written so far; a message that crosses a page of the file becomes visible
    in two parts, `json.loads` fails on the first, the reader thread stops and the step sees
    no outcome (it happened once in a full test run). Here a line without its newline waits
    for the rest."""

    @contextmanager
    def read_messages(self, handler):
        closed = threading.Event()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "messages")
            open(path, "w").close()
            reader = threading.Thread(target=self._read, args=(path, handler, closed), daemon=True)
            reader.start()
            try:
                yield {PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                       PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False}
            finally:
                closed.set()
                reader.join()

    @staticmethod
    def _read(path: str, handler, closed: threading.Event) -> None:
        try:
            with open(path, encoding="utf-8") as messages:
                line = ""
                while True:
                    part = messages.readline()
                    line += part
                    if line.endswith("\n"):
                        handler.handle_message(json.loads(line))
                        line = ""
                    elif not part:
                        if closed.is_set():  # the child is done: nothing more will come
                            return
                        time.sleep(0.01)
        except Exception:
            handler.report_pipes_framework_exception("WholeLineMessageReader", sys.exc_info())
            raise

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a local temporary file."


class TrainerLauncher(dg.ConfigurableResource):
    """`mode="subprocess"` (the default) runs `python -m models.train` through a
    PipesSubprocessClient: logs arrive live, metrics and the outcome as Pipes messages, and a
    crash in training cannot take the orchestrating process with it. `mode="in_process"` calls
    the same `train` function here (debugging, and tests that want one process).
    `nproc_per_node > 1` starts the subprocess under torchrun with that many ranks."""

    mode: str = "subprocess"
    nproc_per_node: int = 1

    def launch(self, context: dg.AssetExecutionContext, request: TrainingRequest, manifest: Path,
               run_dir: Path) -> TrainingReport:
        if self.mode not in MODES:
            raise dg.Failure(f"trainer mode must be one of {MODES}, not {self.mode!r}")
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.mode == "in_process":
            if self.nproc_per_node > 1:
                raise dg.Failure("nproc_per_node > 1 needs mode='subprocess' (torchrun starts the ranks)")
            reporter = _CollectingReporter(context.log)
            train(request, manifest, run_dir, reporter)
            return TrainingReport(reporter.result, reporter.windows)
        request_path = atomic_write_text(run_dir / REQUEST_FILE, request.to_json())
        invocation = self.run_pipes(context, self.command(request_path, manifest, run_dir),
                                    env={"OMP_NUM_THREADS": str(request.threads)})
        return report_from_messages(invocation.get_custom_messages())

    def run_pipes(self, context: dg.AssetExecutionContext, command: list[str], env: dict[str, str]):
        """Start `command` in a Pipes session and wait for it. Override to run it elsewhere."""
        return dg.PipesSubprocessClient(cwd=str(PROJECT_ROOT), message_reader=WholeLineMessageReader()).run(
            context=context, command=command, env=env)

    def command(self, request_path: Path, manifest: Path, run_dir: Path) -> list[str]:
        entry = ["-m", "models.train", "--config", str(request_path), "--manifest", str(manifest),
                 "--run-dir", str(run_dir)]
        if self.nproc_per_node > 1:
            # torchrun's own logs go with the run (by default each launch leaves a folder in /tmp)
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={self.nproc_per_node}", "--log-dir", str(run_dir / "torchrun"), *entry]
        return [sys.executable, *entry]


def report_from_messages(messages: list) -> TrainingReport:
    windows = [(int(m["metrics"]["step"]), m["metrics"]["values"]) for m in messages if "metrics" in m]
    outcomes = [m["outcome"] for m in messages if "outcome" in m]
    if len(outcomes) != 1:
        raise dg.Failure(f"the training process reported {len(outcomes)} outcomes, expected 1: "
                         f"see its stderr in this step's logs ({json.dumps(messages)[:500]})")
    return TrainingReport(TrainingOutcome(**outcomes[0]), windows)
