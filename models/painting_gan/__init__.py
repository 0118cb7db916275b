"""The painting family: a small StyleGAN2 trained on random crops of the painting corpus, and
Gatys style transfer on a random (or the image classifier's) feature network. The design and
its measurements: docs/painting-gan.md."""
from models.champion import ChampionRule
from models.family import FamilyRecord

# KID on the random CNN's style statistics of samples against real crops; lower wins
CHAMPION_RULE = ChampionRule("kid_style", higher_is_better=False)
FAMILY = FamilyRecord(name="painting-gan", title="Paintings (FastGAN)", corpus="painting", rule=CHAMPION_RULE,
                      samples="image", package=__name__, pyfunc_class="PaintingGanPyfunc")
