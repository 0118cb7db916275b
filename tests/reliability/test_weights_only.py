"""Checkpoints and bundles are data: a file carrying a pickled callable or an object whose
__reduce__ runs code is refused by every loader (torch.load(weights_only=True)), and the code
never runs; real checkpoints and bundles still load."""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from models.trainer import fit, load_checkpoint
from tests.reliability._families import FAMILIES, FIRST_VARIANTS, build


class WritesMarker:
    """Unpickling this opens (so creates) the marker file: builtins.open(marker, "w")."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class ExecsCode:
    """Unpickling this runs Python source through builtins.exec."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def real_checkpoint_state() -> dict:
    family, config = build("image_gan")
    return {"format": "atelier.checkpoint/1", "step": 1,
            "modules": {name: module.state_dict() for name, module in family.modules().items()}}


PAYLOADS = {
    "pickled-callable": lambda marker: {"step": 1, "evil": os.system},
    "reduce-open": lambda marker: {"step": 1, "evil": WritesMarker(marker)},
    "reduce-exec": lambda marker: {"step": 1, "extra": {"config": [1, 2, ExecsCode(marker)]}},
    "poisoned-real-checkpoint": lambda marker: {**real_checkpoint_state(), "extra": WritesMarker(marker)},
}


def write_payload(path: Path, payload: dict, how: str) -> Path:
    if how == "torch-zip":
        torch.save(payload, path)
    elif how == "torch-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a plain pickle file with a .pt name
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


def _raises(error: Exception):
    def load(path):
        raise error

    return load


def _loaders() -> dict:
    """name -> loader: the trainer's checkpoints and every file loader of every family."""
    loaders = {"trainer.load_checkpoint": load_checkpoint}
    for name in FIRST_VARIANTS:
        try:
            family_loaders = FAMILIES[name].testing().WEIGHTS_LOADERS
        except ModuleNotFoundError as missing:  # the family's own test fails, saying what is missing
            family_loaders = {"testing": _raises(missing)}
        for loader_name, loader in family_loaders.items():
            loaders[f"{name}.{loader_name}"] = loader
    return loaders


LOADERS = _loaders()


def test_the_payloads_are_live(tmp_path):
    """The control: without weights_only, loading these files does run the code."""
    for name in ("reduce-open", "reduce-exec"):
        marker = tmp_path / f"{name}.ran"
        path = write_payload(tmp_path / f"{name}.pt", PAYLOADS[name](marker), "torch-zip")
        torch.load(path, weights_only=False)
        assert marker.exists(), f"{name} did not run even without weights_only: the test would prove nothing"


@pytest.mark.parametrize("how", ["torch-zip", "torch-legacy", "plain-pickle"])
@pytest.mark.parametrize("loader_name", sorted(LOADERS))
def test_every_loader_refuses_code_in_a_checkpoint(tmp_path, loader_name, how):
    loader = LOADERS[loader_name]
    for payload_name, make in PAYLOADS.items():
        marker = tmp_path / f"{payload_name}-{how}.ran"
        path = write_payload(tmp_path / f"{payload_name}-{how}.pt", make(marker), how)
        expected = pickle.UnpicklingError if how != "plain-pickle" else (pickle.UnpicklingError, RuntimeError)
        with pytest.raises(expected) as refused:
            loader(path)
        if how != "plain-pickle":
            assert "weights_only" in str(refused.value).lower() or "weights only" in str(refused.value).lower()
        assert not marker.exists(), f"{loader_name} ran the code of {payload_name} ({how})"


def test_training_refuses_to_resume_from_a_poisoned_checkpoint(tmp_path):
    family, config = build("image_gan")
    marker = tmp_path / "resume.ran"
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    write_payload(folder / "step-000005.pt", PAYLOADS["poisoned-real-checkpoint"](marker), "torch-zip")
    with pytest.raises(pickle.UnpicklingError):
        fit(family, config, tmp_path / "run")
    assert not marker.exists()


@pytest.mark.parametrize("name", FIRST_VARIANTS)
def test_real_bundles_and_checkpoints_load(tmp_path, name):
    family, _ = build(name)
    bundle, loaded = FAMILIES[name].testing().bundle_round_trip(family, tmp_path)  # the weights fit the model
    assert loaded["format"] == bundle["format"]
    flat = io.BytesIO()
    torch.save(loaded, flat)  # nothing but tensors and plain values came back
    torch.load(io.BytesIO(flat.getvalue()), weights_only=True)

    family, config = build(name, steps=2, checkpoint_every=1)
    result = fit(family, config, tmp_path / "run")
    state = load_checkpoint(result.checkpoint)
    assert state["step"] == 2 and set(state["modules"]) == set(family.modules())
