"""A trivial MLflow pyfunc for the concurrent-registration test.

Imported as a top-level module (`atelier_reliability_pyfunc`, with this folder on sys.path)
and shipped with each model through `code_paths`, so cloudpickle stores the class by
reference and any process can load the model from the model's own files.
"""
import mlflow.pyfunc
import pandas as pd


class ConstantModel(mlflow.pyfunc.PythonModel):
    """predict(anything) -> one row per input row, all equal to the value it was logged with."""

    def __init__(self, value: int):
        self.value = value

    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"value": [self.value] * len(model_input)})
