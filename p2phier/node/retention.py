"""Which of its own pins a node lets go: the retention policy (pure: no I/O, no clock, no trio).

A node pins every artifact it accepts from its parent or children and every one it
publishes; :mod:`p2phier.node.housekeeping` asks :func:`retain` which of them to
unpin before it collects garbage.  The input is what the node holds
(:class:`Held`: one artifact, its stream ``(author, topic)``, round, time and the
files it needs pinned), which CIDs the node *owns* (pins it made itself, never
one the operator had made first), and which CIDs some part of the node declares
still needed (the learner's current versions, the head).  The rules:

* everything needed is kept, with every file of a needed artifact;
* of each *live* stream the newest ``keep`` artifacts (by round, then time) are
  kept: what a child or the parent may still ask for.  A stream is live while its
  author is this node, its parent or one of its children, or while its newest
  artifact is younger than ``idle_ms`` (an author that left keeps its last
  versions a while, then none: streams do not pile up with every peer ever seen);
* every other artifact is dropped; of its files, those the node owns and no kept
  artifact or need names are unpinned (a file shared by two artifacts, e.g. one
  adapter config, stays while either is kept).  A file the node does not own is
  never unpinned: the operator pinned it, or pinned it before the node did.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

#: artifacts kept per live stream by default (``retention.keep_versions``): the newest,
#: and the one before it for a peer still catching up with it
DEFAULT_KEEP = 2


@dataclass(frozen=True, slots=True)
class Held:
    """One artifact the node accepted or published, and the files it needs pinned."""

    cid: str
    author: str
    topic: str
    round: int
    #: when the node accepted or published it (ms since the epoch)
    at_ms: int
    #: every file it needs pinned to be read: envelope, config, payload, its lineage's
    files: frozenset[str]

    @property
    def stream(self) -> tuple[str, str]:
        return self.author, self.topic


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`retain` decided."""

    #: artifacts kept (needed, or among the newest of a live stream)
    kept: frozenset[str]
    #: artifacts dropped: their entries can go once their files are unpinned
    dropped: frozenset[str]
    #: owned files that neither a kept artifact nor a need names
    unpin: frozenset[str]


def retain(
    held: Iterable[Held],
    *,
    owned: Collection[str],
    needed: Collection[str],
    live_authors: Collection[str],
    keep: int,
    now_ms: int,
    idle_ms: int,
) -> Verdict:
    """Decide which held artifacts stay and which owned files to unpin (see the module
    docstring)."""
    if keep < 1:
        raise ValueError("keep at least one version per stream")
    streams: dict[tuple[str, str], list[Held]] = defaultdict(list)
    for h in held:
        streams[h.stream].append(h)
    kept: dict[str, Held] = {}
    dropped: dict[str, Held] = {}
    for (author, _topic), items in streams.items():
        items.sort(key=lambda h: (h.round, h.at_ms, h.cid), reverse=True)
        live = author in live_authors or now_ms - items[0].at_ms < idle_ms
        for n, h in enumerate(items):
            if h.cid in needed or (live and n < keep):
                kept[h.cid] = h
            else:
                dropped[h.cid] = h
    for cid in kept.keys() & dropped.keys():  # one artifact on two streams: kept wins
        del dropped[cid]
    protected = set(needed)
    for h in kept.values():
        protected |= h.files
        protected.add(h.cid)
    candidates = {f for h in dropped.values() for f in (*h.files, h.cid)}
    unpin = (candidates & set(owned)) - protected
    return Verdict(frozenset(kept), frozenset(dropped), frozenset(unpin))


__all__ = ["DEFAULT_KEEP", "Held", "Verdict", "retain"]
