"""What `atelier run` prints: one line per step event or log message, a failure's reason in one
line, no stack traces (the Dagster event log under data/dagster_home keeps everything, and
`atelier ui` shows it)."""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings

import dagster as dg

LOGGER_NAME = "progress"
RUN_CONFIG = {"loggers": {LOGGER_NAME: {}}}  # what `atelier run` passes: this logger instead of the console's


def one_line(text: str) -> str:
    """The first meaningful line of an error or a message."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


class _ProgressFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        step = meta.get("step_key") or meta.get("job_name") or "atelier"
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        event = meta.get("dagster_event")
        if event is None:
            return f"{stamp} {step}: {one_line(meta.get('orig_message', record.getMessage()))}"
        kind = event.event_type_value
        if kind == "STEP_START":
            return f"{stamp} {step}: started"
        if kind == "STEP_SUCCESS":
            seconds = getattr(event.event_specific_data, "duration_ms", 0) / 1000
            return f"{stamp} {step}: done in {seconds:.0f} s"
        if kind == "STEP_FAILURE":
            error = getattr(event.event_specific_data, "error", None)
            cause = error
            while cause is not None and getattr(cause, "cause", None) is not None:
                cause = cause.cause  # the user code's own error, under Dagster's wrapper
            return f"{stamp} {step}: FAILED: {one_line(cause.message if cause else event.message)}"
        return ""


class _ShownEvents(logging.Filter):
    """Step start, success and failure, and every plain log message at INFO or above."""

    SHOWN = {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE"}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return False
        event = (getattr(record, "dagster_meta", None) or {}).get("dagster_event")
        return event is None or event.event_type_value in self.SHOWN


@dg.logger(description="One line per step event and log message on stdout; no stack traces.")
def progress_logger(init_context) -> logging.Logger:
    logger = logging.Logger("atelier.progress", level=logging.INFO)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_ProgressFormatter())
    handler.addFilter(_ShownEvents())
    logger.addHandler(handler)
    return logger


# Known warnings that say nothing to a person running the pipeline: Dagster marks observable
# source assets beta and a Pipes reader method preview.
QUIET_WARNINGS = (r".*is currently in beta", r".*is currently in preview")
QUIET_ENV = "ATELIER_QUIET_WARNINGS"  # set by `atelier run`, so its step processes are quiet too


def quiet_known_warnings(inherited: bool = False) -> None:
    """Hide QUIET_WARNINGS in this process; with `inherited`, in the step processes it starts
    as well (they load the code location, which calls this when $ATELIER_QUIET_WARNINGS is set)."""
    if inherited:
        os.environ[QUIET_ENV] = "1"
    if os.environ.get(QUIET_ENV):
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
