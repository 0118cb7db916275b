"""Which licence each file of a corpus is under, from the licence file in the corpus folder.

A corpus folder may hold `LICENSES.csv` (or `LICENSES.yaml`): rows of glob, licence, attribution,
source_url. A file's licence is that of the first row whose glob matches its path inside the
corpus; a file no row matches is "unknown". docs/licences.md describes the format.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LICENCE_FILE_NAMES = ("LICENSES.csv", "LICENSES.yaml", "LICENSES.yml")
UNKNOWN = "unknown"
COLUMNS = ("glob", "licence", "attribution", "source_url")
REQUIRED_COLUMNS = ("glob", "licence")
# An SPDX identifier (MIT, CC-BY-4.0, LicenseRef-...) or an expression of them joined by AND, OR, WITH.
IDENTIFIER = r"[A-Za-z0-9][A-Za-z0-9.+-]*"
LICENCE_EXPRESSION = re.compile(rf"{IDENTIFIER}(?: (?:AND|OR|WITH) {IDENTIFIER})*")
MAX_ATTRIBUTION_CHARS = 300  # one row's attribution: a line of a tag, not a document
MAX_TAG_CHARS = 4000  # MLflow keeps model version tag values up to 5000 characters


class LicenceFileError(ValueError):
    """A licence file that cannot be read as the format says; the message names file and row."""


@dataclass(frozen=True)
class LicenceRule:
    glob: str
    licence: str
    attribution: str
    source_url: str
    row: int  # the row of the licence file it came from (1 = the first after the header), for messages

    def to_json(self) -> dict:
        return {"glob": self.glob, "licence": self.licence, "attribution": self.attribution,
                "source_url": self.source_url}


def glob_regex(glob: str) -> re.Pattern:
    """A glob over a relative path with "/" between folders: `*` and `?` stay inside one folder
    name, `**` crosses folders (`**/` also matches no folder at all), `[...]` is a character class."""
    parts, index = [], 0
    while index < len(glob):
        char = glob[index]
        if glob.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
            continue
        if glob.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "[" and (end := glob.find("]", index + 2)) > 0:
            body = glob[index + 1:end]
            negated = body.startswith("!")
            body = re.escape(body[1:] if negated else body).replace("\\-", "-")
            parts.append(f"[{'^' if negated else ''}{body}]")
            index = end + 1
            continue
        else:
            parts.append(re.escape(char))
        index += 1
    return re.compile("".join(parts))


class Licences:
    """The licence table of one corpus folder (possibly empty: every file "unknown")."""

    def __init__(self, rules: Iterable[LicenceRule] = (), file_name: str | None = None):
        self.rules = tuple(rules)
        self.file_name = file_name
        self._patterns = [glob_regex(rule.glob) for rule in self.rules]

    def rule_for(self, relpath: str) -> LicenceRule | None:
        """The first row whose glob matches the whole of `relpath`, or None."""
        for rule, pattern in zip(self.rules, self._patterns):
            if pattern.fullmatch(relpath):
                return rule
        return None

    def licence_for(self, relpath: str) -> str:
        return licence_name(self.rule_for(relpath))

    def counts(self, relpaths: Iterable[str]) -> dict[str, int]:
        return count_licences(self.licence_for(relpath) for relpath in relpaths)

    @staticmethod
    def terms(matched: Iterable[LicenceRule | None]) -> dict[str, list[dict]]:
        """licence -> the attribution and source of each row in `matched` (the rows files matched,
        None for a file no row matched), in row order."""
        used = {rule.row: rule for rule in matched if rule is not None}
        terms: dict[str, list[dict]] = {}
        for rule in sorted(used.values(), key=lambda r: r.row):
            entry = {"attribution": rule.attribution, "source_url": rule.source_url}
            if entry not in terms.setdefault(rule.licence, []):
                terms[rule.licence].append(entry)
        return terms

    def to_json(self) -> dict:
        return {"file": self.file_name, "rules": [rule.to_json() for rule in self.rules]}


def licence_name(rule: LicenceRule | None) -> str:
    """The licence a file has when `rule` is the row it matched (None: no row did)."""
    return rule.licence if rule is not None else UNKNOWN


def count_licences(licences: Iterable[str]) -> dict[str, int]:
    """licence -> count, the largest first (ties by name), so every listing reads the same."""
    counted = Counter(licences)
    return dict(sorted(counted.items(), key=lambda item: (-item[1], item[0])))


def licence_file(folder: str | Path) -> Path | None:
    """The corpus folder's licence file; None when it has none. Two of them is an error."""
    found = [Path(folder) / name for name in LICENCE_FILE_NAMES if (Path(folder) / name).is_file()]
    if len(found) > 1:
        raise LicenceFileError(f"{folder} holds {' and '.join(p.name for p in found)}: keep one licence file")
    return found[0] if found else None


def is_licence_file(relpath: str) -> bool:
    """Whether a path inside a corpus folder is its licence file (which is not a corpus file)."""
    return relpath in LICENCE_FILE_NAMES


def read_licences(folder: str | Path) -> Licences:
    """The licence table of a corpus folder; an empty one when the folder has no licence file."""
    path = licence_file(folder)
    return Licences() if path is None else read_licence_file(path)


def read_licence_file(path: Path) -> Licences:
    text = path.read_text(encoding="utf-8")
    records = _csv_records(text, path) if path.suffix == ".csv" else _yaml_records(text, path)
    return Licences(_validated(records, path), path.name)


def _csv_records(text: str, path: Path) -> list[tuple[int, dict]]:
    """(row number, {column: value}) per data row; blank rows and rows whose glob starts with "#" are comments."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    unknown = [name for name in header if name not in COLUMNS]
    problems = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])
    if problems:
        raise LicenceFileError(f"{path}: the header must name the columns {', '.join(COLUMNS)} ({'; '.join(problems)})")
    reader.fieldnames = header
    records = []
    for number, row in enumerate(reader, start=1):
        if None in row:
            raise LicenceFileError(f"{path}: row {number} has more cells than the header names "
                                   "(quote a value that holds a comma)")
        records.append((number, row))
    return records


def _yaml_records(text: str, path: Path) -> list[tuple[int, dict]]:
    import yaml

    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LicenceFileError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        return []
    if not isinstance(loaded, list) or not all(isinstance(item, dict) for item in loaded):
        raise LicenceFileError(f"{path}: expected a list of mappings with keys {', '.join(COLUMNS)}")
    records = []
    for number, item in enumerate(loaded, start=1):
        unknown = [str(key) for key in item if key not in COLUMNS]
        if unknown:
            raise LicenceFileError(f"{path}: entry {number} has unknown keys {', '.join(unknown)} "
                                   f"(the keys are {', '.join(COLUMNS)})")
        records.append((number, {key: "" if value is None else str(value) for key, value in item.items()}))
    return records


def _validated(records: list[tuple[int, dict]], path: Path) -> list[LicenceRule]:
    rules: list[LicenceRule] = []
    first_row_of: dict[str, int] = {}
    for number, record in records:
        values = {name: (record.get(name) or "").strip() for name in COLUMNS}
        where = f"{path}: row {number}"
        if not values["glob"]:
            raise LicenceFileError(f"{where}: the glob is empty")
        if values["glob"].startswith("/"):
            raise LicenceFileError(f"{where}: the glob {values['glob']!r} must be relative to the corpus folder")
        if values["glob"] in first_row_of:
            raise LicenceFileError(f"{where}: the glob {values['glob']!r} repeats row {first_row_of[values['glob']]}, "
                                   "so this row would never apply (the first matching row wins)")
        if not LICENCE_EXPRESSION.fullmatch(values["licence"]):
            raise LicenceFileError(f"{where}: {values['licence']!r} is not a licence identifier (an SPDX identifier "
                                   "such as MIT or CC-BY-4.0, or LicenseRef-<name> for one SPDX does not list)")
        if any(char in values["attribution"] for char in "\r\n") or len(values["attribution"]) > MAX_ATTRIBUTION_CHARS:
            raise LicenceFileError(f"{where}: the attribution must be one line of at most {MAX_ATTRIBUTION_CHARS} characters")
        source = values["source_url"]
        if source and not source.startswith(("https://", "http://", "/")):
            raise LicenceFileError(f"{where}: source_url {source!r} must be an http(s) URL or an absolute file path")
        first_row_of[values["glob"]] = number
        rules.append(LicenceRule(values["glob"], values["licence"], values["attribution"], source, number))
    return rules


# --- what a model version says it was trained on ----------------------------------------------

TRAINING_LICENCES_TAG = "training_licences"
TRAINING_ATTRIBUTION_TAG = "training_attribution"
TRAINING_LICENCES_SCOPE_TAG = "training_licences_scope"


def training_licences(manifest: dict) -> tuple[dict[str, int], str]:
    """(licence -> files, scope) of the files a model trained on: those with rows in the training
    split when the manifest counts them, else every ingested file; a manifest written before
    licences were recorded counts every ingested file as unknown."""
    section = manifest.get("licences")
    if section is None:
        ingested = manifest.get("counts", {}).get("ingested", 0)
        return ({UNKNOWN: ingested} if ingested else {}), "ingested files"
    if "train_files" in section:
        return dict(section["train_files"]), "training split files"
    return dict(section["files"]), "ingested files"


def attribution_text(counts: dict[str, int], terms: dict[str, list[dict]], limit: int = MAX_TAG_CHARS) -> str:
    """One line per licence: its identifier, then each source's attribution and URL; at most `limit` characters."""
    lines = []
    for licence in counts:
        if licence == UNKNOWN:
            lines.append(f"{UNKNOWN}: no row of the corpus's licence file covers these files")
            continue
        sources = [" ".join(part for part in (entry["attribution"], f"<{entry['source_url']}>" if entry["source_url"] else "")
                            if part) for entry in terms.get(licence, [])]
        lines.append(f"{licence}: " + ("; ".join(source for source in sources if source) or "no attribution given"))
    text = "\n".join(lines)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def training_tags(manifest: dict) -> dict[str, str]:
    """The model-version tags that say what a model was trained on (docs/licences.md)."""
    counts, scope = training_licences(manifest)
    terms = manifest.get("licences", {}).get("terms", {})
    return {TRAINING_LICENCES_TAG: json.dumps(counts),
            TRAINING_ATTRIBUTION_TAG: attribution_text(counts, terms),
            TRAINING_LICENCES_SCOPE_TAG: scope}


def counts_text(counts: dict[str, int]) -> str:
    """"MIT: 63,000 files, unknown: 1 file": what galleries show."""
    return ", ".join(f"{licence}: {count:,} file{'' if count == 1 else 's'}" for licence, count in counts.items())


def counts_from_tag(value: str | None) -> dict[str, int] | None:
    """The `training_licences` tag read back; None when absent or unreadable."""
    try:
        counts = json.loads(value) if value else None
    except ValueError:
        return None
    if not isinstance(counts, dict):
        return None
    return {str(k): int(v) for k, v in counts.items() if isinstance(v, int)}


def trained_on_text(tags: dict) -> str:
    """What a model version's tags say it was trained on, for galleries: counts per licence and their scope."""
    counts = counts_from_tag(tags.get(TRAINING_LICENCES_TAG))
    if counts is None:
        return "not recorded (registered before training licences were tagged)"
    return f"{counts_text(counts) or 'no files'} ({tags.get(TRAINING_LICENCES_SCOPE_TAG, 'files')})"
