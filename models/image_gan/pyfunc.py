"""The registered image GAN: what `mlflow.pyfunc.load_model("models:/image-gan@champion")` runs.

Shipped with the record's code paths (models/ and common/), so it imports nothing else of this
project (no corpora/, no dagster).
"""
from __future__ import annotations

from models.requests import RequestPyfunc, missing, request_dict, scalar

DEFAULT_N, DEFAULT_SEED = 16, 0


class ImageGanPyfunc(RequestPyfunc):
    """predict({n=16, seed=0, label=None, interpolate_to=None}) -> uint8 images (n, H, W, C).

    `label` is a class index or class name (conditional models; default: every class in
    turn). With `interpolate_to` (a second seed), the n images are a latent interpolation
    strip from `seed` to it instead of independent samples.
    """

    def load_context(self, context):
        from models.image_gan.sampling import load_bundle, load_generator

        bundle = load_bundle(context.artifacts["bundle"])  # weights_only=True inside
        self.generator = load_generator(bundle)
        self.class_names = list(bundle.get("class_names", []))

    def _label_index(self, label):
        if missing(label):
            return None
        if isinstance(label, str):
            if label in self.class_names:
                return self.class_names.index(label)
            if not label.strip().lstrip("-").isdigit():
                raise ValueError(f"unknown class {label!r}; classes: {self.class_names}")
        return int(label)

    def predict(self, context, model_input, params=None):
        from models.image_gan.sampling import interpolate, sample

        request = {key: scalar(value) for key, value in
                   request_dict(model_input, "keys n, seed, label, interpolate_to").items()}
        n = DEFAULT_N if missing(request.get("n")) else int(request["n"])
        seed = DEFAULT_SEED if missing(request.get("seed")) else int(request["seed"])
        label = self._label_index(request.get("label"))
        if not missing(request.get("interpolate_to")):
            return interpolate(self.generator, seed, int(request["interpolate_to"]), steps=n, label_a=label)
        return sample(self.generator, n, seed, labels=label)
