"""The registered music VAE: what `mlflow.pyfunc.load_model("models:/music-vae@champion")` runs.

Shipped with the record's code paths (models/ and common/), so it imports nothing else of this
project (no corpora/, no dagster).

Requests (a dict, or a one-row DataFrame with these columns):
- {"n": 4, "seed": 0, "temperature": 0.5, "rhythm_temperature": 1.0, "bars": 2, "mode": "chorale",
   "forbid_consecutives": true}
  -> a list of n MIDI files (bytes), each a phrase of `bars` bars (2, 4 or 8; default one 2-bar
  window), its pitches drawn at `temperature` (default the gallery's, 0.5 as Magenta's) and when
  each voice strikes, releases or holds at `rhythm_temperature` (default 1.0: the model's own
  odds), with no consecutive fifths or octaves between voices nor hidden ones in the outer voices
  unless `forbid_consecutives` is false (default the gallery's: forbidden);
- {"interpolate": [midi_a, midi_b], "steps": 5, "mode": ...} -> a list of `steps` MIDI files
  from phrase a to phrase b (both encoded, latents slerped, each decoded greedily).
"mode" defaults to the bundle's first model ("melody" or "chorale").
"""
from __future__ import annotations

from models.music_vae.sampling import (
    GALLERY_FORBIDS_CONSECUTIVES,
    GALLERY_TEMPERATURE,
    RHYTHM_TEMPERATURE,
    interpolate,
    load_bundle,
    load_model,
    sample,
)
from models.music_vae.tokens import (
    DEFAULT_QPM,
    midi_bytes_to_tokens,
    tokens_to_midi_bytes,
)
from models.requests import RequestPyfunc, flag, missing, request_dict, scalar

DEFAULT_N, DEFAULT_SEED, DEFAULT_STEPS = 4, 0, 5
MAX_N = 1024  # one request must not be able to ask for unbounded work


class MusicVaePyfunc(RequestPyfunc):
    def load_context(self, context):
        bundle = load_bundle(context.artifacts["bundle"])  # weights_only=True inside
        self.models = {kind: load_model(bundle, kind) for kind in bundle["models"]}
        self.default_mode = next(iter(bundle["models"]))
        self.qpm = float(bundle["tokens"].get("qpm", DEFAULT_QPM))

    def _model(self, mode):
        mode = self.default_mode if missing(mode) else str(mode)
        if mode not in self.models:
            raise ValueError(f"mode {mode!r} is not in this model; it has {sorted(self.models)}")
        return self.models[mode]

    def predict(self, context, model_input, params=None):
        request = request_dict(model_input, "n, seed, temperature, rhythm_temperature, bars, forbid_consecutives, "
                                            "mode or interpolate")
        model = self._model(scalar(request.get("mode")))
        voices, steps_per_window = model.config.voices, model.config.steps_per_window
        ends = request.get("interpolate")
        if not missing(ends):
            ends = list(ends)
            if len(ends) != 2:
                raise ValueError("interpolate needs exactly two MIDI files (bytes)")
            steps = DEFAULT_STEPS if missing(scalar(request.get("steps"))) else int(scalar(request["steps"]))
            a, b = (midi_bytes_to_tokens(bytes(end), voices, steps_per_window) for end in ends)
            windows = interpolate(model, a, b, steps=min(steps, MAX_N))
        else:
            n = DEFAULT_N if missing(scalar(request.get("n"))) else int(scalar(request["n"]))
            seed = DEFAULT_SEED if missing(scalar(request.get("seed"))) else int(scalar(request["seed"]))
            temperature = scalar(request.get("temperature"))
            temperature = GALLERY_TEMPERATURE if missing(temperature) else float(temperature)
            rhythm_temperature = scalar(request.get("rhythm_temperature"))
            rhythm_temperature = RHYTHM_TEMPERATURE if missing(rhythm_temperature) else float(rhythm_temperature)
            bars = scalar(request.get("bars"))
            if not 0 <= n <= MAX_N:
                raise ValueError(f"n must be within 0..{MAX_N}")
            windows = sample(model, n, seed=seed, temperature=temperature, bars=None if missing(bars) else float(bars),
                             forbid_consecutives=flag(request.get("forbid_consecutives"), "forbid_consecutives",
                                                      default=GALLERY_FORBIDS_CONSECUTIVES),
                             rhythm_temperature=rhythm_temperature)
        return [tokens_to_midi_bytes(window, self.qpm) for window in windows]
