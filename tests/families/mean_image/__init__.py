"""A fifth family, for tests only: it learns the mean picture of the image corpus and samples
it with noise. It is registered exactly as a real family is (a package whose FAMILY record the
code location, the training entry point, the site and `atelier sample` find), from outside
models/: $ATELIER_FAMILIES names it, and tests/families must be importable."""
from models.champion import ChampionRule
from models.family import FamilyRecord

CHAMPION_RULE = ChampionRule("heldout_mse", higher_is_better=False)
FAMILY = FamilyRecord(name="mean-image", title="Mean picture (a test family)", corpus="images", rule=CHAMPION_RULE,
                      samples="image", package=__name__, pyfunc_class="MeanImagePyfunc",
                      dagster_module="mean_image.assets")
