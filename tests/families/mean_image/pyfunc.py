"""predict({"n", "seed"}) -> uint8 pictures (n, H, W, C), with only models/ and this package."""
from __future__ import annotations

from models.requests import RequestPyfunc, request_dict, scalar


class MeanImagePyfunc(RequestPyfunc):
    def load_context(self, context) -> None:
        from mean_image.model import load_model

        self.model = load_model(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):
        request = request_dict(model_input, "n, seed")
        return self.model.sample(int(scalar(request.get("n", 4))), int(scalar(request.get("seed", 0))))
