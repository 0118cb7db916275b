"""People's votes into the registry: the Bradley-Terry fit, the `human_preference` asset (real
materialize, real MLflow SQLite store, real votes database), the `new_votes` sensor and the
champion rule's human gate. Versions are registered directly: nothing trains here."""
import math
import shutil
from pathlib import Path

import dagster as dg
import pytest

from assets.human_preference import human_preference
from assets.training import champion_check_result, promote
from models.champion import HUMAN_FAIL, HUMAN_PASS, HUMAN_WAIT, HumanGate
from models.family import families
from pipelines.automation import new_votes_sensor
from pipelines.definitions import build_resources
from ratings.preference import evidence, fit_family
from ratings.store import Flag, PairwiseVote, VoteStore, default_votes_url
from tests.conftest import materialization_metadata

FAMILY, OTHER = list(families().values())[:2]  # any two families: the asset fits each on its own
GATE_ON = {"resources": {"human_gate": {"config": {"enabled": True, "min_votes": 20, "max_flag_share": 0.05}}}}


def vote(winner: str, loser: str, times: int, family=FAMILY.name) -> list[PairwiseVote]:
    return [PairwiseVote(family, winner, seed, loser, seed + 1, "shards-a", "shards-a", f"rater-{seed % 3}")
            for seed in range(times)]


def flag(version: str, reason: str, times: int) -> list[Flag]:
    return [Flag(FAMILY.name, version, seed, "shards-a", reason, f"rater-{seed}") for seed in range(times)]


def metric_scores(better_than: dict | None = None) -> dict[str, float]:
    """Numbers for every metric the family's rule reads; with `better_than`, a metric that wins
    against those and guards equal to them."""
    rule = FAMILY.rule
    if better_than is None:
        return {name: 1.0 for name in rule.metrics}
    step = 0.5 if rule.higher_is_better else -0.5
    return {**better_than, rule.metric: better_than[rule.metric] + step}


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """A migrated, empty MLflow database, made once: migrating one takes seconds."""
    root = tmp_path_factory.mktemp("template")
    mlflow = build_resources(str(root))["mlflow"]
    mlflow.initialize()
    return root / "mlflow" / "mlflow.db"


@pytest.fixture
def registry_setup(tmp_path, empty_mlflow_db):
    """Resources under a fresh data root, with three registered versions of FAMILY (1 champion)
    and one of OTHER, and the votes database at its default place."""
    (tmp_path / "data" / "mlflow").mkdir(parents=True)
    shutil.copy(empty_mlflow_db, tmp_path / "data" / "mlflow" / "mlflow.db")
    resources = build_resources(str(tmp_path / "data"))
    mlflow = resources["mlflow"]
    client = mlflow.client()
    for record, count in ((FAMILY, 3), (OTHER, 1)):
        client.create_registered_model(record.name)
        for _ in range(count):
            client.create_model_version(record.name, source=str(tmp_path / "no-model"))
    champion_scores = metric_scores()
    promote(mlflow, FAMILY.name, FAMILY.rule, "1", champion_scores)
    store = VoteStore(default_votes_url(tmp_path / "data"))
    yield resources, store, champion_scores
    store.dispose()


def test_fit_orders_versions_by_votes_and_keeps_a_winner_only_version_finite():
    votes = vote("2", "1", 24) + vote("1", "2", 6) + vote("3", "1", 4) + vote("1", "1", 5)  # the last: one version
    fitted = fit_family(FAMILY.name, votes + vote("1", "3", 9, family=OTHER.name), flag("1", "copy", 2))
    one, two, three = (fitted.versions[v] for v in "123")
    assert two.score > one.score and three.score > one.score and math.isfinite(three.score)
    assert (one.votes, one.wins, two.votes, two.wins, three.votes, three.wins) == (34, 6, 30, 24, 4, 4)
    assert one.flags == {"copy": 2, "offensive": 0} and two.flags == {"copy": 0, "offensive": 0}
    assert abs(one.score + two.score + three.score) < 1e-6  # centred
    assert three.high - three.low > two.high - two.low > 0  # four votes say less than thirty
    difference, std_error = fitted.difference("2", "1")
    assert difference == pytest.approx(two.score - one.score) and 0 < std_error < two.std_error + one.std_error
    assert difference / std_error > 3  # 24 of 30 is far from a coin toss
    assert fit_family(FAMILY.name, []).versions == {}
    assert fit_family(FAMILY.name, vote("1", "1", 3)).versions == {}  # one version only: nothing to compare
    assert math.isnan(evidence(fitted, "2", "4").difference)


def test_human_preference_writes_scores_to_metadata_and_registry(registry_setup):
    resources, store, _ = registry_setup
    for v in vote("2", "1", 24) + vote("1", "2", 6) + vote("3", "1", 4) + vote("5", "6", 1, family=OTHER.name):
        store.add_pairwise(v)
    for f in flag("1", "copy", 2) + flag("2", "offensive", 1):
        store.add_flag(f)

    result = dg.materialize([human_preference], resources=resources, instance=dg.DagsterInstance.ephemeral())
    metadata = materialization_metadata(result, human_preference)
    assert metadata["votes_through_id"] == store.latest_vote_id() == 38
    rows = {(row["family"], row["version"]): row for row in metadata["versions"]}
    assert set(rows) == {(FAMILY.name, "1"), (FAMILY.name, "2"), (FAMILY.name, "3")}  # OTHER's vote names no version
    one, two, three = (rows[FAMILY.name, v] for v in "123")
    assert float(two["human_score"]) > float(one["human_score"]) < float(three["human_score"])
    for row in (one, two, three):
        assert float(row["human_score_low"]) < float(row["human_score"]) < float(row["human_score_high"])
    assert (one["human_votes"], one["human_wins"], one["human_flags_copy"]) == ("34", "6", "2")
    assert (two["human_votes"], two["human_wins"], two["human_flags_offensive"]) == ("30", "24", "1")
    assert "| " + FAMILY.name + " | 2 | " + two["human_score"] in metadata["preference"]

    client = resources["mlflow"].client()
    for version, row in (("1", one), ("2", two), ("3", three)):
        tags = client.get_model_version(FAMILY.name, version).tags
        assert {name: tags[name] for name in row if name.startswith("human_")} == {
            name: value for name, value in row.items() if name.startswith("human_")}
    assert "human_votes" not in client.get_model_version(OTHER.name, "1").tags


def test_new_votes_sensor_fires_on_a_new_vote_or_flag_only(tmp_path):
    storage = build_resources(str(tmp_path))["storage"]
    store = VoteStore(default_votes_url(tmp_path))
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage})
        return new_votes_sensor(context)

    assert isinstance(tick(None), dg.SkipReason)  # an empty database
    store.add_pairwise(vote("2", "1", 1)[0])
    fired = tick(None)
    assert [r.run_key for r in fired.run_requests] == ["votes-1"] and fired.cursor == "1"
    assert isinstance(tick(fired.cursor), dg.SkipReason)
    store.add_flag(flag("2", "copy", 1)[0])
    again = tick(fired.cursor)
    assert [r.run_key for r in again.run_requests] == ["votes-2"] and again.cursor == "2"
    store.dispose()


def test_gate_makes_a_metric_winner_wait_then_blocks_or_promotes_it_on_votes(registry_setup):
    resources, store, champion_scores = registry_setup
    mlflow, gate = resources["mlflow"], HumanGate(enabled=True, min_votes=20, max_flag_share=0.05)
    instance = dg.DagsterInstance.ephemeral()

    def refit() -> dict:
        result = dg.materialize([human_preference], resources=resources, instance=instance, run_config=GATE_ON)
        return materialization_metadata(result, human_preference)["promotions"][FAMILY.name]

    def champion() -> str:
        return str(mlflow.get_version_by_alias(FAMILY.name, "champion").version)

    # version 2 wins on the metric but nobody has voted: it waits as challenger
    waiting = promote(mlflow, FAMILY.name, FAMILY.rule, "2", metric_scores(champion_scores), gate,
                      default_votes_url(resources["storage"].root))
    check = champion_check_result(waiting)
    assert not check.passed and check.metadata["metric_passes"].value is True
    assert check.metadata["human_verdict"].value == HUMAN_WAIT
    assert "waiting for votes: 0 of 20" in check.metadata["human_part"].value and champion() == "1"

    # people significantly prefer the champion: still blocked
    for v in vote("1", "2", 30) + vote("2", "1", 10):
        store.add_pairwise(v)
    blocked = refit()
    assert blocked["human_verdict"] == HUMAN_FAIL and "significantly worse" in blocked["human_part"]
    assert blocked["metric_passes"] and not blocked["promoted"] and champion() == "1"

    # version 3: metric wins, votes even, but flagged as a copy too often (3 of 43 ratings, above 5%)
    promote(mlflow, FAMILY.name, FAMILY.rule, "3", metric_scores(champion_scores), gate,
            default_votes_url(resources["storage"].root))
    for v in vote("3", "1", 20) + vote("1", "3", 20):
        store.add_pairwise(v)
    for f in flag("3", "copy", 3):
        store.add_flag(f)
    flagged = refit()
    assert flagged["human_verdict"] == HUMAN_FAIL and "flagged 3 times" in flagged["human_part"]
    assert champion() == "1"

    # more votes dilute the flags below the share, people like it: promoted by human_preference
    for v in vote("3", "1", 30) + vote("1", "3", 10):
        store.add_pairwise(v)
    promoted = refit()
    assert promoted["human_verdict"] == HUMAN_PASS and promoted["promoted"] and champion() == "3"


def test_site_shows_the_human_score_beside_the_metric(registry_setup, tmp_path):
    from assets.gallery_site import _version_rows, site_html

    resources, _, _ = registry_setup
    client = resources["mlflow"].client()
    tags = {"human_score": "0.8123", "human_score_low": "0.1000", "human_score_high": "1.5246", "human_votes": "30",
            "human_wins": "24", "human_flags_copy": "1", "human_flags_offensive": "0"}
    for name, value in tags.items():
        client.set_model_version_tag(FAMILY.name, "2", name, value)
    rows, champion = _version_rows(resources["mlflow"], FAMILY, tmp_path)
    page = site_html([(FAMILY, rows, champion)])
    assert "<th>people</th>" in page and "<td>0.8123 [0.1000, 1.5246], 30 votes, 1 flag</td>" in page
