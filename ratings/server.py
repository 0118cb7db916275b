"""The gallery site over HTTP, with rating pages: which of two samples is better (one from a family's
champion, one from its challenger, names hidden until after the vote), and flags on each sample.

Design notes (the pair token, the cross-site checks, the rater cookie): docs/ratings.md.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import html
import json
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from cryptography.fernet import Fernet, InvalidToken
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ratings.store import FLAG_REASONS, Flag, PairwiseVote, VoteStore

HOST = "127.0.0.1"
LOOPBACK_NAMES = ["127.0.0.1", "localhost"]
SESSION_COOKIE, NAME_COOKIE = "atelier_rater", "atelier_rater_name"
COOKIE_MAX_AGE_S = 365 * 24 * 3600
PAIR_TTL_S = 24 * 3600
MAX_FORM_BYTES = 8192
MAX_RATER_NAME = 40
FLAG_LABELS = {"copy": "looks like a copy of a training item", "offensive": "offensive"}
CHAMPION, CHALLENGER = "champion", "challenger"
SIDES = ("a", "b")
STYLE = """body{font-family:sans-serif;margin:2em;max-width:75em} .pair{display:flex;flex-wrap:wrap;gap:2em}
.sample{border:1px solid #ccc;padding:1em;margin:0;max-width:22em}
.sample img{width:20em;max-width:100%;max-height:50vh;object-fit:contain;image-rendering:pixelated} .sample video{max-width:100%}
.sample h2{margin-top:0} button{font-size:110%;margin:0.3em 0.3em 0 0} .flags button{font-size:85%}
.note{background:#eef6ee;padding:0.5em 1em} .error{color:#a00} figcaption{color:#444;font-size:90%}"""


# ---- the secret, and what it signs ------------------------------------------------------


def load_secret(data_root: Path) -> bytes:
    """`<data_root>/ratings/secret.key`, 32 random bytes made on first use, readable by its owner only.
    Written beside its name and hard-linked into place, so two servers starting at once agree."""
    path = Path(data_root) / "ratings" / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".secret.{secrets.token_hex(8)}.tmp")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(secrets.token_bytes(32))
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_bytes()


def _derive(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, purpose.encode(), hashlib.sha256).digest()


@dataclasses.dataclass(frozen=True)
class Sample:
    version: str
    seed: int
    data_version: str
    kind: str  # img, audio or video
    src: str  # relative to the galleries folder
    role: str  # champion or challenger


class Signer:
    """CSRF tokens bound to a rater's session, and pair tokens: the pair encrypted and signed (Fernet),
    so a page can name its pair without a reader learning the versions or a poster forging them."""

    def __init__(self, secret: bytes):
        self._csrf_key = _derive(secret, "csrf")
        self._pairs = Fernet(base64.urlsafe_b64encode(_derive(secret, "pair")))

    def csrf(self, session: str) -> str:
        return hmac.new(self._csrf_key, session.encode(), hashlib.sha256).hexdigest()

    def csrf_matches(self, session: str, token: str) -> bool:
        return bool(session) and hmac.compare_digest(self.csrf(session), token)

    def pair_token(self, family: str, pair: tuple[Sample, Sample]) -> str:
        payload = [family, [list(dataclasses.astuple(sample)) for sample in pair]]
        return self._pairs.encrypt(json.dumps(payload, separators=(",", ":")).encode()).decode()

    def open_pair(self, token: str) -> tuple[str, tuple[Sample, Sample]] | None:
        try:
            payload = json.loads(self._pairs.decrypt(token.encode(), ttl=PAIR_TTL_S))
        except (InvalidToken, ValueError):
            return None
        family, (a, b) = payload
        return family, (Sample(*a), Sample(*b))


# ---- what there is to rate: the registry's champion and challenger, and their galleries ---


def rateable_items(galleries: Path, family: str, version: str) -> list[dict]:
    """The cover items of a version's gallery that name their seed (assets/gallery_page.py `write_cover`)."""
    folder = galleries / family / version
    try:
        items = json.loads((folder / "cover.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [item for item in items if isinstance(item.get("seed"), int) and item.get("kind") in ("img", "audio", "video")
            and (folder / str(item.get("src", ""))).is_file()]


def contenders(client, family: str) -> tuple | None:
    """(champion, challenger) model versions: the `challenger` alias if set, else the newest version that
    is not the champion; None while the family has no champion or nothing to set against it."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(family).aliases
    except MlflowException:
        return None
    champion = aliases.get(CHAMPION)
    if champion is None:
        return None
    challenger = aliases.get(CHALLENGER)
    if challenger is None or str(challenger) == str(champion):
        others = [int(v.version) for v in client.search_model_versions(f"name='{family}'") if str(v.version) != str(champion)]
        if not others:
            return None
        challenger = max(others)
    return client.get_model_version(family, str(champion)), client.get_model_version(family, str(challenger))


def draw_pair(client, galleries: Path, family: str) -> tuple[Sample, Sample] | str:
    """One sample each from the champion's and the challenger's galleries, the same file name and seed
    where both have one, in random order; or why there is nothing to rate."""
    versions = contenders(client, family)
    if versions is None:
        return "This family has no champion and challenger to compare yet."
    items = [rateable_items(galleries, family, str(mv.version)) for mv in versions]
    if not all(items):
        return "The champion's or the challenger's gallery has no samples to rate yet (materialize its gallery)."
    shared = [item for item in items[0] if any((o["src"], o["seed"]) == (item["src"], item["seed"]) for o in items[1])]
    first = secrets.choice(shared or items[0])
    second = next((o for o in items[1] if o["src"] == first["src"] and o["seed"] == first["seed"]), None)
    second = second or secrets.choice(items[1])
    pair = [Sample(str(mv.version), item["seed"], mv.tags.get("data_version") or "unknown", item["kind"],
                   f"{family}/{mv.version}/{item['src']}", role)
            for mv, item, role in zip(versions, (first, second), (CHAMPION, CHALLENGER))]
    if secrets.randbelow(2):
        pair.reverse()
    return pair[0], pair[1]


# ---- pages ----------------------------------------------------------------------------------


def page(title: str, body: str) -> str:
    e = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="referrer" content="same-origin"><style>{STYLE}</style></head>
<body><p><a href="/">Galleries</a> · <a href="/rate">Rate</a></p><h1>{e(title)}</h1>
{body}
</body></html>
"""


def media(kind: str, src: str, alt: str) -> str:
    e = html.escape
    if kind == "img":
        return f'<img src="{e(src)}" alt="{e(alt)}">'
    if kind == "audio":
        return f'<audio controls preload="metadata" src="{e(src)}"></audio>'
    return f'<video controls muted loop preload="metadata" src="{e(src)}"></video>'


def rater_form(rater_name: str, csrf: str) -> str:
    e = html.escape
    who = f"Rating as <strong class=\"rater\">{e(rater_name)}</strong>." if rater_name else "Rating anonymously."
    return (f'<form method="post" action="/rater" class="rater-form"><p>{who} '
            f'<label>Your name (optional): <input name="name" maxlength="{MAX_RATER_NAME}" value="{e(rater_name)}"></label>'
            f'<input type="hidden" name="csrf" value="{e(csrf)}"> <button type="submit">Save name</button></p></form>')


def rate_html(family_title: str, family: str, token: str, pair: tuple[Sample, Sample], csrf: str, rater_name: str,
              note: str = "") -> str:
    e = html.escape
    hidden = f'<input type="hidden" name="pair" value="{e(token)}"><input type="hidden" name="csrf" value="{e(csrf)}">'
    columns = []
    for side, sample in zip(SIDES, pair):
        flags = "".join(f'<button type="submit" name="reason" value="{reason}" id="flag-{side}-{reason}">Flag: {e(label)}</button>'
                        for reason, label in FLAG_LABELS.items())
        columns.append(
            f'<div class="sample" id="sample-{side}"><h2>Sample {side.upper()}</h2>'
            f'{media(sample.kind, f"/rate/sample/{side}?pair={quote(token)}", f"sample {side.upper()}")}'
            f'<form method="post" action="/rate/{e(family)}/vote">{hidden}'
            f'<button type="submit" name="choice" value="{side}" id="choose-{side}">{side.upper()} is better</button></form>'
            f'<form method="post" action="/rate/{e(family)}/flag" class="flags">{hidden}'
            f'<input type="hidden" name="side" value="{side}">{flags}</form></div>')
    note_html = f'<p class="note" id="note">{e(note)}</p>' if note else ""
    return page(f"Which is better? {family_title}", f"""{note_html}{rater_form(rater_name, csrf)}
<p>Two samples of <code>{e(family)}</code>: one from its champion, one from its challenger, in random order.
Which model made which is shown after you choose.</p>
<div class="pair">{''.join(columns)}</div>""")


def reveal_html(family_title: str, family: str, pair: tuple[Sample, Sample], choice: str) -> str:
    e = html.escape
    figures = []
    for side, sample in zip(SIDES, pair):
        chosen = " (your choice)" if side == choice else ""
        caption = f"Sample {side.upper()}{chosen}: {family} version {sample.version} ({sample.role}), seed {sample.seed}"
        figures.append(f'<figure class="sample" id="revealed-{side}">{media(sample.kind, "/" + sample.src, caption)}'
                       f'<figcaption>{e(caption)}</figcaption></figure>')
    return page(f"Thank you: {family_title}", f"""<p class="note" id="note">Your vote is recorded.</p>
<div class="pair">{''.join(figures)}</div>
<p><a href="/rate/{e(family)}" id="next">Rate another pair</a></p>""")


# ---- the application ------------------------------------------------------------------------


def _decode_name(value: str) -> str:
    try:
        return valid_rater_name(base64.urlsafe_b64decode(value.encode()).decode())
    except ValueError:
        return ""


def valid_rater_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_RATER_NAME or not name.isprintable():
        raise ValueError(f"a name is 1 to {MAX_RATER_NAME} printable characters")
    return name


def same_origin(request: Request) -> bool:
    """A form post's Origin (or, without one, its Referer) names this server's own host and port."""
    host = request.headers.get("host", "")
    source = request.headers.get("origin") or request.headers.get("referer") or ""
    parts = urlsplit(source)
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc == host


async def read_form(request: Request) -> dict[str, str] | None:
    """The url-encoded form, one value per field; None when it is too large or not a form."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode(), max_num_fields=20, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {key: values[0] for key, values in fields.items()}


def create_app(data_root: Path, client, store: VoteStore) -> Starlette:
    """The site under `<data_root>/galleries/` plus the rating pages; `client` is an MlflowClient on the
    registry, `store` where votes go."""
    from models.family import families

    galleries = Path(data_root) / "galleries"
    signer = Signer(load_secret(data_root))
    records = families()

    def session_of(request: Request) -> tuple[str, bool]:
        session = request.cookies.get(SESSION_COOKIE, "")
        if len(session) == 22 and session.replace("-", "").replace("_", "").isalnum():
            return session, False
        return secrets.token_urlsafe(16), True

    def rater_of(request: Request, session: str) -> tuple[str, str]:
        """(the id a vote records, the name shown): the typed name, else the session's own id."""
        name = _decode_name(request.cookies.get(NAME_COOKIE, ""))
        return (name or f"anonymous-{session[:12]}"), name

    def respond(body: str, session: str, new_session: bool, status: int = 200) -> HTMLResponse:
        response = HTMLResponse(body, status_code=status, headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'none'; style-src 'unsafe-inline'; "
                                       "form-action 'self'; frame-ancestors 'none'",
            "Cache-Control": "no-store"})
        if new_session:
            response.set_cookie(SESSION_COOKIE, session, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict")
        return response

    def family_or_none(request: Request):
        return records.get(request.path_params["family"])

    async def rate_index(request: Request) -> Response:
        session, new = session_of(request)
        e = html.escape
        rows = "".join(f'<li><a href="/rate/{e(name)}">{e(record.title)}</a> <code>{e(name)}</code></li>'
                       for name, record in records.items())
        return respond(page("Rate the galleries", f"<p>Pick a family: you will see a sample of its champion and one of "
                                                  f"its challenger, unnamed, and choose the better.</p><ul>{rows}</ul>"),
                       session, new)

    async def rate_placeholder(request: Request) -> Response:
        family = request.query_params.get("family", "")
        return RedirectResponse(f"/rate/{quote(family)}" if family in records else "/rate", status_code=303)

    async def rate_family(request: Request) -> Response:
        record = family_or_none(request)
        session, new = session_of(request)
        if record is None:
            return respond(page("No such family", "<p>Pick one on <a href=\"/rate\">the rating page</a>.</p>"), session, new, 404)
        pair = draw_pair(client, galleries, record.name)
        if isinstance(pair, str):
            return respond(page(f"Nothing to rate: {record.title}", f'<p id="note">{html.escape(pair)}</p>'), session, new)
        _, name = rater_of(request, session)
        token = signer.pair_token(record.name, pair)
        return respond(rate_html(record.title, record.name, token, pair, signer.csrf(session), name), session, new)

    async def sample_file(request: Request) -> Response:
        opened = signer.open_pair(request.query_params.get("pair", ""))
        side = request.path_params["side"]
        if opened is None or side not in SIDES:
            return Response("unknown sample", status_code=404)
        sample = opened[1][SIDES.index(side)]
        path = (galleries / sample.src).resolve()
        if not path.is_file() or galleries.resolve() not in path.parents:
            return Response("unknown sample", status_code=404)
        return FileResponse(path, headers={"Cache-Control": "no-store"})

    async def checked_post(request: Request) -> tuple[dict, str] | Response:
        """The form of a post that passed every cross-site check, with the rater's session; or a 403/400."""
        session = request.cookies.get(SESSION_COOKIE, "")
        if not same_origin(request):
            return Response("cross-site post refused", status_code=403)
        form = await read_form(request)
        if form is None:
            return Response("not a form this site sends", status_code=400)
        if not signer.csrf_matches(session, form.get("csrf", "")):
            return Response("missing or wrong form token: reload the page", status_code=403)
        return form, session

    async def posted_pair(request: Request):
        """(form, session, family record, the pair its token names) of a post that passed the cross-site
        checks; a 403/400 response otherwise. Record and pair are None when the family or token is unknown."""
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        form, session = checked
        record = family_or_none(request)
        opened = signer.open_pair(form.get("pair", "")) if record else None
        pair = opened[1] if opened is not None and opened[0] == record.name else None
        return form, session, record, pair

    async def vote(request: Request) -> Response:
        posted = await posted_pair(request)
        if isinstance(posted, Response):
            return posted
        form, session, record, pair = posted
        choice = form.get("choice")
        if pair is None or choice not in SIDES:
            return Response("this pair is unknown or expired: reload the page", status_code=400)
        winner, loser = pair if choice == "a" else pair[::-1]
        rater, _ = rater_of(request, session)
        store.add_pairwise(PairwiseVote(
            family=record.name, winner_version=winner.version, winner_seed=winner.seed, loser_version=loser.version,
            loser_seed=loser.seed, data_version_winner=winner.data_version, data_version_loser=loser.data_version,
            rater=rater))
        return respond(reveal_html(record.title, record.name, pair, choice), session, False)

    async def flag(request: Request) -> Response:
        posted = await posted_pair(request)
        if isinstance(posted, Response):
            return posted
        form, session, record, pair = posted
        side, reason = form.get("side"), form.get("reason")
        if pair is None or side not in SIDES or reason not in FLAG_REASONS:
            return Response("this pair is unknown or expired, or the flag is not one this site offers", status_code=400)
        sample = pair[SIDES.index(side)]
        rater, name = rater_of(request, session)
        store.add_flag(Flag(family=record.name, model_version=sample.version, seed=sample.seed,
                            data_version=sample.data_version, reason=reason, rater=rater))
        note = f"Sample {side.upper()} is flagged: {FLAG_LABELS[reason]}. You can still say which is better."
        return respond(rate_html(record.title, record.name, form["pair"], pair, signer.csrf(session), name, note),
                       session, False)

    async def set_rater(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        form, session = checked
        try:
            name = valid_rater_name(form.get("name", ""))
        except ValueError as error:
            return respond(page("Name not saved", f'<p class="error">{html.escape(str(error))}</p>'), session, False, 400)
        back = request.headers.get("referer", "")
        response = RedirectResponse(urlsplit(back).path if same_origin(request) and back else "/rate", status_code=303)
        response.set_cookie(NAME_COOKIE, base64.urlsafe_b64encode(name.encode()).decode(), max_age=COOKIE_MAX_AGE_S,
                            httponly=True, samesite="strict")
        return response

    routes = [
        Route("/rate", rate_index),
        Route("/rate.html", rate_placeholder),
        Route("/rater", set_rater, methods=["POST"]),
        Route("/rate/sample/{side}", sample_file),
        Route("/rate/{family}", rate_family),
        Route("/rate/{family}/vote", vote, methods=["POST"]),
        Route("/rate/{family}/flag", flag, methods=["POST"]),
        Mount("/", StaticFiles(directory=galleries, html=True, check_dir=False)),
    ]
    # Only loopback host names: a page elsewhere cannot rebind its own name to this server.
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES)])
