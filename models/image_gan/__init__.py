"""Image GAN family: a class-conditional DCGAN or WGAN-GP with an EMA generator, trained on the
image corpus and scored in the feature space of a classifier trained on that corpus.

config (settings, profiles) · networks (G, D, gradient penalty) · sampling (a bundle's generator,
samples, interpolations) · metrics (the report) · data (the corpus split) · training (the trainer
Family, `run_training`) · pyfunc (the registered model). Design and measurements: docs/image-gan.md.
"""
from models.champion import ChampionRule, Guard
from models.family import FamilyRecord

# Fréchet distance in the feature classifier's space, lower wins; but not by a model that draws
# the wrong class more often than the champion (fid_classifier can improve while labels are ignored).
CHAMPION_RULE = ChampionRule("fid_classifier", higher_is_better=False,
                             guards=(Guard("label_accuracy", higher_is_better=True, tolerance=0.05),))
FAMILY = FamilyRecord(name="image-gan", title="Images (GAN)", corpus="images", rule=CHAMPION_RULE, samples="image",
                      package=__name__, pyfunc_class="ImageGanPyfunc")
