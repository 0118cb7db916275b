"""Reading a pyfunc request: a dict, a list of one dict, or a one-row DataFrame, as MLflow's
`predict` may hand it over. Values stay whole (a list of MIDI files, a clip of frames); `scalar`
unwraps the one-element lists that column-minded callers send for single values."""
from __future__ import annotations

import math
from collections.abc import Mapping

import mlflow.pyfunc
import numpy as np


class RequestPyfunc(mlflow.pyfunc.PythonModel):
    """Base of the registered wrappers. Their requests are untyped on purpose (the three shapes
    above), so MLflow's type-hint validation, and its notice asking for hints, is switched off."""

    _skip_type_hint_validation = True


def request_dict(model_input, what: str) -> dict:
    """The request as a plain dict; `what` names its keys for the error message."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # pandas DataFrame
        rows = model_input.to_dict(orient="records")
        if len(rows) > 1:
            raise ValueError(f"expected a one-row DataFrame, got {len(rows)} rows")
        return dict(rows[0]) if rows else {}
    if isinstance(model_input, Mapping):
        return dict(model_input)
    if isinstance(model_input, (list, tuple)) and len(model_input) == 1 and isinstance(model_input[0], Mapping):
        return dict(model_input[0])
    raise TypeError(f"expected a dict or a one-row DataFrame with {what}; got {type(model_input).__name__}")


def scalar(value):
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 1:
        return value[0]
    return value


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def flag(value, name: str, default: bool = False) -> bool:
    """A true/false request value (`default` when missing); anything else is refused by name."""
    value = scalar(value)
    if missing(value):
        return default
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{name} must be true or false, not {value!r}")
