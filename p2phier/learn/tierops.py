"""Models across tiers, for the node's interface (:mod:`p2phier.learn.api` re-exports these).

Owns adapters mapped between a parent tier and a tier derived from it
(:func:`map_for_tier`), student and int8 tiers built from a teacher
(:func:`distil_student`, :func:`quantise_tier`), and tiers stored as one bundle and
unpacked with every check (:func:`export_tier`, :func:`import_tier`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from p2phier.artifact.bundle import pack_dir, unpack_dir
from p2phier.cid import CID
from p2phier.learn.data import Example
from p2phier.learn.distill import DistillConfig, build_int8_tier, build_student_tier
from p2phier.learn.models import (
    MAX_TIER_WEIGHTS,
    ModelError,
    TierInfo,
    TierIntegrityError,
    load_tier,
    read_tier_info,
)
from p2phier.learn.tiermap import Direction, map_adapter, tier_block_map
from p2phier.learn.train import Session
from p2phier.store.base import ContentStore
from p2phier.unixfs import build_file


def map_for_tier(
    adapter_dir: Path,
    out_dir: Path,
    *,
    child_tier_dir: Path,
    parent_tier_dir: Path,
    direction: Direction,
) -> Path:
    """Map an adapter between a parent tier and a child tier derived from it (or the same).

    ``down``: a parent-tier adapter (an ancestor's or the parent's version)
    for the child to train on; ``up``: the child's adapter in the parent's
    space, for :func:`aggregate_round`.  See :mod:`p2phier.learn.tiermap`.
    """
    mapping = tier_block_map(child_tier_dir, parent_tier_dir)
    target = read_tier_info(child_tier_dir if direction == "down" else parent_tier_dir)
    return map_adapter(
        adapter_dir, out_dir, mapping, direction=direction, base_model=target.tier_id
    )


def distil_student(
    teacher_tier_dir: Path,
    out_dir: Path,
    examples: Sequence[Example | str],
    *,
    tier_id: str,
    layers: Sequence[int],
    max_vocab: int | None = None,
    steps: int = 40,
    batch_size: int = 16,
    max_length: int = 64,
    seed: int = 0,
) -> TierInfo:
    """A student tier of the teacher's *base* (no adapters), distilled on the node's examples.

    Adapters reach it later through :func:`map_for_tier`, like any other
    version, so the student stays the same whatever the teacher learns.
    """
    # A fresh LoRA starts with B = 0: merging it leaves the base weights as they are.
    teacher = Session(load_tier(teacher_tier_dir), seed=seed)
    config = DistillConfig(steps=steps, batch_size=batch_size, max_length=max_length, seed=seed)
    return build_student_tier(
        teacher,
        out_dir,
        tier_id=tier_id,
        layers=layers,
        examples=examples,
        max_vocab=max_vocab,
        config=config,
    )


def quantise_tier(source_dir: Path, out_dir: Path, *, tier_id: str) -> TierInfo:
    """The device tier: ``source_dir``'s tier with row-wise int8 weights."""
    return build_int8_tier(source_dir, out_dir, tier_id=tier_id)


def export_tier(store: ContentStore, tier_dir: Path) -> CID:
    """Store a tier directory as one bundle (a canonical tar); its weights' CID is checked first."""
    tier_dir = Path(tier_dir)
    info = read_tier_info(tier_dir)
    weights = tier_dir / info.weights_file
    if not weights.is_file() or weights.stat().st_size > MAX_TIER_WEIGHTS:
        raise ModelError(f"{weights} is missing or larger than {MAX_TIER_WEIGHTS} bytes")
    if str(build_file(weights.read_bytes())[0]) != info.weights_cid:
        raise TierIntegrityError(f"{weights} does not match {info.weights_cid}; not exported")
    return pack_dir(store, tier_dir)


def import_tier(
    store: ContentStore, cid: CID | str, out_dir: Path, *, expected_weights_cid: str | None
) -> TierInfo:
    """Unpack a tier bundle to the new ``out_dir`` and verify it; a bad tier is removed again.

    ``expected_weights_cid`` is the tier CID the caller trusts (from a signed
    record): the weights must hash to it, and the files must match the
    description bound to the weights (:func:`~p2phier.learn.models.load_tier`).
    ``None`` when the bundle's own CID is the trust anchor (it came from a
    signed manifest and every block was hash-checked on fetch): the files must
    still match the description inside the bundle.
    """
    path = unpack_dir(store, cid, out_dir, max_total=MAX_TIER_WEIGHTS + _TIER_FILES_EXTRA)
    try:
        return load_tier(path, expected_cid=expected_weights_cid).info
    except Exception as exc:
        # Whatever fails (CID, description, tokenizer, config), the directory is
        # not a usable tier: it goes away before anything can load it.
        _discard(path)
        if isinstance(exc, TierIntegrityError):
            raise
        raise TierIntegrityError(f"bundle {cid} does not hold a usable tier: {exc}") from exc


_TIER_FILES_EXTRA = 256 * 1024 * 1024  # tokenizer and JSON files beside the weights


def _discard(path: Path) -> None:
    """Remove a directory, first renaming it so that it vanishes from its name at once."""
    doomed = path.with_name(f".discard-{path.name}-{os.getpid()}")
    try:
        os.replace(path, doomed)
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)
