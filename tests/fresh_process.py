"""Code for a fresh Python process that must load a registered model without this project."""

FORBID_PROJECT_IMPORTS = '''
import importlib.abc, io, json, sys

class Forbid(importlib.abc.MetaPathFinder):
    # the registered model may use only models/ (from its code path) and what MLflow installs
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("corpora", "dagster", "assets", "pipelines", "resources"):
            raise ImportError(f"the pyfunc imported {name}")
        return None

sys.meta_path.insert(0, Forbid())
'''
