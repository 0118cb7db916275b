"""Music VAE family: MusicVAE-style (Roberts et al. 2018) VAEs over 2-bar token windows of the
MIDI corpus, one over melodies and one over 4-voice chorales, registered together as one bundle.

tokens (the token scheme, tokens <-> MIDI) · config (settings, profiles) · network (encoder,
decoder, losses) · sampling (a bundle's models, encode, decode, sample, interpolate) · metrics
(the held-out report) · render (piano roll and mel pictures of a window) · training (the trainer
Family, `run_training`) · pyfunc (the registered model). Design and measurements: docs/music-vae.md.
"""
from models.champion import ChampionRule, Guard
from models.family import FamilyRecord

# -ELBO per token bounds the held-out NLL, so weak KL pressure cannot buy it the way it buys
# reconstruction accuracy; the guard keeps the music drawn from the prior from getting worse.
# Both are averaged over the bundle's kinds.
CHAMPION_RULE = ChampionRule("neg_elbo_per_token", higher_is_better=False,
                             guards=(Guard("prior_statistics_overlap", higher_is_better=True, tolerance=0.02),))
FAMILY = FamilyRecord(name="music-vae", title="Music (VAE)", corpus="midi", rule=CHAMPION_RULE, samples="midi",
                      package=__name__, pyfunc_class="MusicVaePyfunc", requirements=("pretty_midi",))
