"""Checkpoints and bundles are data: a file carrying a pickled callable or an object whose
__reduce__ runs code is refused by every loader (torch.load(weights_only=True)), and the code
never runs; real checkpoints and bundles still load."""
from __future__ import annotations

import importlib
import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from models.trainer import fit, load_checkpoint
from tests.reliability._families import FAMILIES, build, skip_unless_present

torch.set_num_threads(1)


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


# name -> (module that must import, loader); the families still being written are skipped until they exist
LOADERS = {
    "trainer.load_checkpoint": ("models.trainer", lambda path: load_checkpoint(path)),
    "image_gan.load_bundle": ("models.image_gan", lambda path: importlib.import_module("models.image_gan").load_bundle(path)),
    "music_vae.load_bundle": ("models.music_vae", lambda path: importlib.import_module("models.music_vae").load_bundle(path)),
    "painting_gan.load_bundle": ("models.painting_gan",
                                 lambda path: importlib.import_module("models.painting_gan").load_bundle(path)),
    "video_rnn.load_bundle": ("models.video_rnn", lambda path: importlib.import_module("models.video_rnn").load_bundle(path)),
    "image_gan.load_classifier": ("models.image_gan",
                                  lambda path: importlib.import_module("models.image_gan").load_classifier(path)),
}


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
    module, loader = LOADERS[loader_name]
    skip_unless_present(module)
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


def _bundle_round_trip(name: str, tmp_path: Path):
    family, _ = build(name)
    module_name = FAMILIES[name].module
    module = importlib.import_module(module_name)
    if module_name == "models.music_vae":
        bundle = module.export_bundle(family, steps={family.config.kind: 0})
    else:
        bundle = module.export_bundle(family, step=0)
    path = module.save_bundle(bundle, tmp_path / "bundle.pt")
    loaded = module.load_bundle(path)
    assert loaded["format"] == bundle["format"]
    for loader in ("load_generator", "load_model"):
        if hasattr(module, loader):
            getattr(module, loader)(loaded)  # the weights fit the model the config describes
    return bundle, loaded


@pytest.mark.parametrize("name", ["image_gan", "music_vae", "painting_gan", "video_rnn"])
def test_real_bundles_and_checkpoints_load(tmp_path, name):
    skip_unless_present(FAMILIES[name].module)
    bundle, loaded = _bundle_round_trip(name, tmp_path)
    flat = io.BytesIO()
    torch.save(loaded, flat)  # nothing but tensors and plain values came back
    torch.load(io.BytesIO(flat.getvalue()), weights_only=True)

    family, config = build(name)
    config.steps, config.checkpoint_every = 2, 1
    result = fit(family, config, tmp_path / "run")
    state = load_checkpoint(result.checkpoint)
    assert state["step"] == 2 and set(state["modules"]) == set(family.modules())
