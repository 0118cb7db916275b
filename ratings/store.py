"""Votes from people: pairwise preferences and per-sample flags, in a SQL database.

SQLite under the data root by default; any SQLAlchemy URL (PostgreSQL, for one) through
`ATELIER_VOTES_URL`. Each write is one transaction, and every field is validated first.
"""
from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

VOTES_URL_ENV = "ATELIER_VOTES_URL"
FLAG_REASONS = ("copy", "offensive")
MAX_NAME = 200  # family, version and data-version strings
MAX_RATER = 64

_metadata = sa.MetaData()
# One id sequence for votes and flags alike, so the newest id over both tables grows with every
# write of either kind (the sensor's cursor). AUTOINCREMENT: SQLite never hands an id out twice.
_vote_ids = sa.Table(
    "vote_ids", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sqlite_autoincrement=True,
)
_pairwise = sa.Table(
    "pairwise_votes", _metadata,
    sa.Column("id", sa.Integer, sa.ForeignKey("vote_ids.id"), primary_key=True, autoincrement=False),
    sa.Column("family", sa.String(MAX_NAME), nullable=False, index=True),
    sa.Column("winner_version", sa.String(MAX_NAME), nullable=False),
    sa.Column("winner_seed", sa.Integer, nullable=False),
    sa.Column("loser_version", sa.String(MAX_NAME), nullable=False),
    sa.Column("loser_seed", sa.Integer, nullable=False),
    sa.Column("data_version_winner", sa.String(MAX_NAME), nullable=False),
    sa.Column("data_version_loser", sa.String(MAX_NAME), nullable=False),
    sa.Column("rater", sa.String(MAX_RATER), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
_flags = sa.Table(
    "flags", _metadata,
    sa.Column("id", sa.Integer, sa.ForeignKey("vote_ids.id"), primary_key=True, autoincrement=False),
    sa.Column("family", sa.String(MAX_NAME), nullable=False, index=True),
    sa.Column("model_version", sa.String(MAX_NAME), nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("data_version", sa.String(MAX_NAME), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("rater", sa.String(MAX_RATER), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclasses.dataclass(frozen=True)
class PairwiseVote:
    family: str
    winner_version: str
    winner_seed: int
    loser_version: str
    loser_seed: int
    data_version_winner: str
    data_version_loser: str
    rater: str
    created_at: datetime | None = None
    id: int | None = None


@dataclasses.dataclass(frozen=True)
class Flag:
    family: str
    model_version: str
    seed: int
    data_version: str
    reason: str
    rater: str
    created_at: datetime | None = None
    id: int | None = None


def default_votes_url(data_root: Path) -> str:
    """`$ATELIER_VOTES_URL`, else a SQLite file at `<data_root>/ratings/votes.db`."""
    if url := os.environ.get(VOTES_URL_ENV):
        return url
    folder = Path(data_root).resolve() / "ratings"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'votes.db'}"


def _text(value, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValueError(f"{field} must be a non-empty string of at most {limit} characters, not {value!r}")
    return value


def _seed(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -2**31 <= value < 2**31:
        raise ValueError(f"{field} must be a 32-bit integer, not {value!r}")
    return value


def _pairwise_row(vote: PairwiseVote) -> dict:
    if vote.winner_version == vote.loser_version and vote.winner_seed == vote.loser_seed:
        raise ValueError("a pairwise vote compares two different samples")
    return {
        "family": _text(vote.family, "family", MAX_NAME),
        "winner_version": _text(vote.winner_version, "winner_version", MAX_NAME),
        "winner_seed": _seed(vote.winner_seed, "winner_seed"),
        "loser_version": _text(vote.loser_version, "loser_version", MAX_NAME),
        "loser_seed": _seed(vote.loser_seed, "loser_seed"),
        "data_version_winner": _text(vote.data_version_winner, "data_version_winner", MAX_NAME),
        "data_version_loser": _text(vote.data_version_loser, "data_version_loser", MAX_NAME),
        "rater": _text(vote.rater, "rater", MAX_RATER),
        "created_at": vote.created_at or datetime.now(timezone.utc),
    }


def _flag_row(flag: Flag) -> dict:
    if flag.reason not in FLAG_REASONS:
        raise ValueError(f"reason must be one of {FLAG_REASONS}, not {flag.reason!r}")
    return {
        "family": _text(flag.family, "family", MAX_NAME),
        "model_version": _text(flag.model_version, "model_version", MAX_NAME),
        "seed": _seed(flag.seed, "seed"),
        "data_version": _text(flag.data_version, "data_version", MAX_NAME),
        "reason": flag.reason,
        "rater": _text(flag.rater, "rater", MAX_RATER),
        "created_at": flag.created_at or datetime.now(timezone.utc),
    }


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything written here is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class VoteStore:
    """The votes database at `url` (any SQLAlchemy URL); its tables are created if missing."""

    def __init__(self, url: str):
        self.url = url
        self.engine = sa.create_engine(url)
        _metadata.create_all(self.engine)

    def add_pairwise(self, vote: PairwiseVote) -> int:
        return self._insert(_pairwise, _pairwise_row(vote))

    def add_flag(self, flag: Flag) -> int:
        return self._insert(_flags, _flag_row(flag))

    def _insert(self, table: sa.Table, row: dict) -> int:
        """The row under a fresh id from the shared sequence, both in one transaction."""
        with self.engine.begin() as connection:
            new_id = connection.execute(sa.insert(_vote_ids).values(kind=table.name)).inserted_primary_key[0]
            connection.execute(sa.insert(table).values(id=new_id, **row))
        return new_id

    def pairwise(self, family: str | None = None) -> list[PairwiseVote]:
        query = sa.select(_pairwise).order_by(_pairwise.c.id)
        if family is not None:
            query = query.where(_pairwise.c.family == family)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [PairwiseVote(**{**row, "created_at": _utc(row["created_at"])}) for row in rows]

    def flags(self, family: str | None = None) -> list[Flag]:
        query = sa.select(_flags).order_by(_flags.c.id)
        if family is not None:
            query = query.where(_flags.c.family == family)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [Flag(**{**row, "created_at": _utc(row["created_at"])}) for row in rows]

    def latest_vote_id(self) -> int:
        """The largest id over votes and flags, 0 when empty: it grows with every write of either kind."""
        with self.engine.connect() as connection:
            newest = [connection.execute(sa.select(sa.func.max(table.c.id))).scalar() for table in (_pairwise, _flags)]
        return max((n or 0) for n in newest)

    def dispose(self) -> None:
        self.engine.dispose()
