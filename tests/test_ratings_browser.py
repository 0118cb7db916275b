"""The rating site as its users meet it: `atelier gallery` in a subprocess on a free loopback port,
a real MLflow registry with two versions of one family and their galleries, and Debian's headless
Chromium (driven by Playwright, no browser download) clicking the vote and flag buttons. Votes are
then read back from the votes database, and from `human_preference`'s metadata and the registry once it has run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from assets.gallery_page import write_cover
from assets.gallery_site import _version_rows, write_site
from assets.human_preference import human_preference
from corpora.shards import png_bytes
from models.family import families
from pipelines.definitions import build_resources
from ratings.store import VOTES_URL_ENV, VoteStore, default_votes_url
from resources.mlflow_registry import registry_for
from tests.browser import chromium
from tests.conftest import materialization_metadata
from tests.test_end_to_end import ARTIFACTS, answers, free_port

playwright = pytest.importorskip("playwright.sync_api")

FAMILY = "image-gan"
SHADES = {"1": 40, "2": 220}  # each version's sample is one flat grey, so a picture says which version drew it
START_TIMEOUT_S = 120
HOSTILE_NAME = '<script>document.title="owned"</script>'


def register_versions(data_root: Path) -> dict[str, bytes]:
    """Two registered versions (no training: a run and a version record each), version 1 the champion,
    each with a gallery whose cover is one picture drawn from seed 5; returns each version's picture."""
    registry = registry_for(data_root)
    client = registry.client()
    client.create_registered_model(FAMILY)
    pictures = {}
    for version, shade in SHADES.items():
        run = client.create_run(registry.ensure_experiment(FAMILY))
        made = client.create_model_version(FAMILY, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                           tags={"data_version": f"shards-{version}"})
        assert str(made.version) == version
        folder = data_root / "galleries" / FAMILY / version
        folder.mkdir(parents=True)
        pictures[version] = png_bytes(np.full((24, 24, 3), shade, dtype=np.uint8))
        (folder / "samples.png").write_bytes(pictures[version])
        write_cover(folder, [("img", "samples.png")], {"samples.png": f"{FAMILY} version {version}, seed 5"},
                    {"samples.png": 5})
    registry.set_alias(FAMILY, "champion", "1")
    galleries = data_root / "galleries"
    write_site(galleries, [(family, *_version_rows(registry, family, galleries)) for family in families().values()])
    return pictures


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    data_root = tmp_path_factory.mktemp("ratings") / "data"
    data_root.mkdir()
    env = {**os.environ, "ATELIER_DATA_ROOT": str(data_root), "DAGSTER_HOME": str(data_root / "dagster_home")}
    for name in (VOTES_URL_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    port = free_port()
    log = open(data_root.parent / "gallery.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "gallery", "--port", str(port)], env=env,
                              cwd=data_root.parent, stdout=log, stderr=subprocess.STDOUT)
    pictures = register_versions(data_root)  # while the server starts
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(f"{url}/rate"):
        assert server.poll() is None, (data_root.parent / "gallery.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the gallery server did not answer in time"
        time.sleep(0.3)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield {"url": url, "data_root": data_root, "pictures": pictures, "browser": browser,
               "store": VoteStore(default_votes_url(data_root))}
        browser.close()
    server.send_signal(signal.SIGINT)
    server.wait(timeout=30)
    log.close()


def version_shown(page, side: str, pictures: dict[str, bytes]) -> str:
    """Which version drew the picture on `side`, told by its bytes (the page itself names none)."""
    src = page.locator(f"#sample-{side} img").get_attribute("src")
    body = page.request.get(urllib.parse.urljoin(page.url, src)).body()
    [version] = [version for version, picture in pictures.items() if picture == body]
    return version


def test_a_vote_and_a_flag_cast_by_clicking_land_in_the_database_with_version_seed_and_data(site):
    page = site["browser"].new_page()
    page.goto(f"{site['url']}/rate/{FAMILY}")
    html = page.content()
    assert page.locator("#sample-a img").evaluate("img => img.naturalWidth") == 24
    assert f"{FAMILY}/1/" not in html and f"{FAMILY}/2/" not in html and "version" not in html  # names hidden
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "rate.png"), full_page=True)
    shown = {side: version_shown(page, side, site["pictures"]) for side in "ab"}
    assert sorted(shown.values()) == ["1", "2"]

    page.click("#flag-b-offensive")
    assert "Sample B is flagged: offensive" in page.locator("#note").inner_text()
    page.click("#choose-a")
    revealed = page.locator("#revealed-a figcaption").inner_text()
    roles = {"1": "champion", "2": "challenger"}
    assert revealed == f"Sample A (your choice): {FAMILY} version {shown['a']} ({roles[shown['a']]}), seed 5"
    assert f"version {shown['b']} ({roles[shown['b']]})" in page.locator("#revealed-b figcaption").inner_text()

    [vote] = site["store"].pairwise(FAMILY)
    assert (vote.winner_version, vote.winner_seed, vote.loser_version, vote.loser_seed) == (shown["a"], 5, shown["b"], 5)
    assert (vote.data_version_winner, vote.data_version_loser) == (f"shards-{shown['a']}", f"shards-{shown['b']}")
    assert vote.rater.startswith("anonymous-")
    [flag] = site["store"].flags(FAMILY)
    assert (flag.model_version, flag.seed, flag.data_version, flag.reason) == (shown["b"], 5, f"shards-{shown['b']}", "offensive")
    assert flag.rater == vote.rater and flag.id < vote.id == site["store"].latest_vote_id()
    page.close()


def test_the_clicked_vote_reaches_human_preference_and_the_registry(site):
    """After the test above: the vote and the flag clicked there, in the asset's metadata once
    `human_preference` is materialized, and in the model versions' tags."""
    if not site["store"].pairwise(FAMILY):
        pytest.skip("reads the vote the test above casts")
    [vote], [flag] = site["store"].pairwise(FAMILY), site["store"].flags(FAMILY)
    resources = build_resources(str(site["data_root"]))
    result = dg.materialize([human_preference], resources=resources, instance=dg.DagsterInstance.ephemeral())
    metadata = materialization_metadata(result, human_preference)
    assert metadata["votes_through_id"] == vote.id
    rows = {row["version"]: row for row in metadata["versions"] if row["family"] == FAMILY}
    winner, loser = rows[vote.winner_version], rows[vote.loser_version]
    assert (winner["human_votes"], winner["human_wins"], loser["human_wins"]) == ("1", "1", "0")
    assert float(winner["human_score"]) > float(loser["human_score"])
    assert rows[flag.model_version]["human_flags_offensive"] == "1"
    client = resources["mlflow"].client()
    for version, row in rows.items():
        tags = client.get_model_version(FAMILY, version).tags
        assert {name: tags[name] for name in row if name.startswith("human_")} == {
            name: value for name, value in row.items() if name.startswith("human_")}
    # The site, rebuilt as the gallery_site asset would after this, shows each version's score beside its metric.
    galleries, registry = site["data_root"] / "galleries", resources["mlflow"]
    write_site(galleries, [(family, *_version_rows(registry, family, galleries)) for family in families().values()])
    page = site["browser"].new_page()
    page.goto(f"{site['url']}/")
    newest = page.locator("section").filter(has=page.locator("code", has_text=FAMILY)).locator("tr").nth(1)
    assert newest.locator("td").nth(0).inner_text() == "2"
    people = newest.locator("td").nth(3).inner_text()  # version, aliases, metric, people
    assert people.startswith(f'{rows["2"]["human_score"]} [{rows["2"]["human_score_low"]}, ') and ", 1 vote" in people and "votes" not in people
    page.screenshot(path=str(ARTIFACTS / "site-with-human-scores.png"), full_page=True)
    page.close()


def test_the_site_links_to_rating_served_and_says_how_to_start_the_server_from_a_file(site):
    page = site["browser"].new_page()
    page.goto(f"{site['url']}/")
    page.click("a.rate")
    assert page.url == f"{site['url']}/rate/{FAMILY}" and page.locator(".sample").count() == 2
    page.goto((site["data_root"] / "galleries" / "index.html").as_uri())
    page.click("a.rate")
    assert page.locator("h1").inner_text() == "Rating needs the gallery server"
    assert "atelier gallery" in page.content()
    page.close()


def test_a_typed_name_is_recorded_and_shown_as_text(site):
    page = site["browser"].new_page()
    page.goto(f"{site['url']}/rate/{FAMILY}")
    page.fill("input[name=name]", HOSTILE_NAME)
    page.click("text=Save name")
    assert page.url == f"{site['url']}/rate/{FAMILY}"
    assert page.locator(".rater").inner_text() == HOSTILE_NAME
    assert page.locator("script").count() == 0 and "&lt;script&gt;" in page.content() and page.title() != "owned"
    page.click("#choose-b")
    assert site["store"].pairwise(FAMILY)[-1].rater == HOSTILE_NAME
    page.close()


def post(url: str, fields: dict, origin: str | None, cookie: str = "") -> int:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie, **({"Origin": origin} if origin else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_cross_site_posts_are_refused_and_write_nothing(site):
    store, url = site["store"], site["url"]
    page = site["browser"].new_page()
    page.goto(f"{url}/rate/{FAMILY}")
    fields = {"pair": page.locator("#sample-a input[name=pair]").first.input_value(),
              "csrf": page.locator("#sample-a input[name=csrf]").first.input_value(), "choice": "a"}
    [session] = [c for c in page.context.cookies() if c["name"] == "atelier_rater"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    cookie = f"atelier_rater={session['value']}"
    before = store.latest_vote_id()

    # A page elsewhere submits the real form, fields copied: the browser withholds the cookie.
    page.goto("about:blank")
    page.set_content(f'<form method="post" action="{url}/rate/{FAMILY}/vote">' + "".join(
        f'<input type="hidden" name="{name}" value="{value}">' for name, value in fields.items()) + "<button>go</button></form>")
    with page.expect_navigation() as navigation:
        page.click("button")
    assert navigation.value.status == 403
    vote_url = f"{url}/rate/{FAMILY}/vote"
    assert post(vote_url, fields, "http://evil.example", cookie) == 403  # the rater's cookie, from another site
    assert post(vote_url, fields, None, cookie) == 403  # neither Origin nor Referer
    assert post(vote_url, {**fields, "csrf": ""}, url, cookie) == 403
    assert post(vote_url, {**fields, "csrf": "0" * 64}, url, cookie) == 403
    assert post(vote_url, fields, url, "atelier_rater=" + "x" * 22) == 403  # someone else's session
    assert post(f"{url}/rate/{FAMILY}/flag", {**fields, "side": "a", "reason": "copy", "csrf": ""}, url, cookie) == 403
    assert store.latest_vote_id() == before
    assert post(vote_url, {**fields, "pair": fields["pair"][:-4] + "AAAA"}, url, cookie) == 400  # a forged pair
    assert post(vote_url, fields, url, cookie) == 200  # the same post from the site itself is taken
    assert store.latest_vote_id() > before
    assert (site["data_root"] / "ratings" / "secret.key").stat().st_mode & 0o777 == 0o600
    page.close()

