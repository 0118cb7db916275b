"""The votes database: a real SQLite file, written and read back through VoteStore."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ratings.store import FLAG_REASONS, VOTES_URL_ENV, Flag, PairwiseVote, VoteStore, default_votes_url


def vote(**changes) -> PairwiseVote:
    fields = dict(family="image-gan", winner_version="2", winner_seed=7, loser_version="1", loser_seed=3,
                  data_version_winner="dv-b", data_version_loser="dv-a", rater="ada")
    return PairwiseVote(**{**fields, **changes})


def flag(**changes) -> Flag:
    fields = dict(family="image-gan", model_version="1", seed=3, data_version="dv-a", reason="copy", rater="ada")
    return Flag(**{**fields, **changes})


def test_default_url_is_sqlite_under_the_data_root_unless_configured(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(VOTES_URL_ENV, raising=False)
    assert default_votes_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/ratings/votes.db"
    assert (tmp_path / "ratings").is_dir()
    monkeypatch.setenv(VOTES_URL_ENV, "postgresql+psycopg://votes@localhost/atelier")
    assert default_votes_url(tmp_path) == "postgresql+psycopg://votes@localhost/atelier"


def test_votes_and_flags_round_trip_and_the_cursor_grows_with_each(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(VOTES_URL_ENV, raising=False)
    store = VoteStore(default_votes_url(tmp_path))
    assert store.latest_vote_id() == 0 and store.pairwise() == [] and store.flags() == []
    first = store.add_pairwise(vote())
    second = store.add_flag(flag(reason="offensive"))
    third = store.add_pairwise(vote(family="music-vae", winner_version="1", loser_version="3"))
    assert first < second < third == store.latest_vote_id()

    reopened = VoteStore(default_votes_url(tmp_path))  # a second process sees the committed rows
    [image_vote] = reopened.pairwise("image-gan")
    assert (image_vote.id, image_vote.winner_version, image_vote.winner_seed, image_vote.loser_version,
            image_vote.loser_seed, image_vote.data_version_winner, image_vote.rater) == (first, "2", 7, "1", 3, "dv-b", "ada")
    assert image_vote.created_at is not None and image_vote.created_at.tzinfo is not None
    assert [v.family for v in reopened.pairwise()] == ["image-gan", "music-vae"]
    [flagged] = reopened.flags()
    assert (flagged.id, flagged.reason, flagged.seed) == (second, "offensive", 3)
    assert reopened.flags("music-vae") == []
    with sqlite3.connect(tmp_path / "ratings" / "votes.db") as db:  # really on disk, in its tables
        assert db.execute("select count(*) from pairwise_votes").fetchone() == (2,)


@pytest.mark.parametrize("bad", [
    vote(family=""), vote(winner_version="x" * 500), vote(winner_seed="7"), vote(loser_seed=True),
    vote(rater=" "), vote(rater="r" * 65), vote(loser_version="2", loser_seed=7),
    flag(reason="boring"), flag(seed=None), flag(data_version=3),
])
def test_invalid_input_is_refused_and_nothing_is_written(tmp_path: Path, bad):
    store = VoteStore(f"sqlite:///{tmp_path / 'votes.db'}")
    with pytest.raises(ValueError):
        (store.add_flag if isinstance(bad, Flag) else store.add_pairwise)(bad)
    assert store.latest_vote_id() == 0 and store.pairwise() == [] and store.flags() == []
    assert set(FLAG_REASONS) == {"copy", "offensive"}
