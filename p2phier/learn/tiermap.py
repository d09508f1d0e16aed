"""Adapters across a tier boundary: which block of one tier is which block of another.

A hierarchy mixes tiers: a domain node runs the master, its sub-domain
children a *student* distilled from it (teacher blocks ``layers`` kept, in
order), their devices an *int8* copy of that student.  Adapters cross these
boundaries by *layer mapping*, as InclusiveFL and DepthFL do for clients of
different depths: student block ``i`` is teacher block ``layers[i]``, an int8
tier's blocks are its source's blocks one for one, and the heads (same shapes
on all of these tiers) pass through unchanged.

What this module owns:

* :func:`block_map`: child block index -> parent block index for two tiers,
  refusing tiers that are not the same or directly derived;
* :func:`tier_blocks` and :func:`tier_block_map`: the same from tier
  directories (block counts read from ``config.json``, size-limited);
* :func:`map_adapter`: rewrite a PEFT adapter directory block by block,
  ``down`` (a parent's version into the child's space: unmapped blocks are
  dropped) or ``up`` (a child's adapter into the parent's space), renaming the
  block-indexed entries of its config too so PEFT and
  :func:`~p2phier.learn.train.read_adapter` accept the result.

The tensors are copied bit for bit and written canonically: the same input
gives the same bytes.  File and numpy work only: no model is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from p2phier.learn.aggregate import LORA_A_SUFFIX, LORA_B_SUFFIX
from p2phier.learn.models import MAX_TIER_JSON, ModelError, TierInfo, read_tier_info
from p2phier.learn.train import PEFT_PREFIX, AdapterError, read_adapter, write_adapter

logger = logging.getLogger(__name__)

Direction = Literal["down", "up"]
#: a config may name its block count under any of these (BERT/Llama, GPT-2, T5-style)
_BLOCK_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
MAX_BLOCKS = 4096


def tier_blocks(tier_dir: Path) -> int:
    """The number of transformer blocks of the tier in ``tier_dir`` (from its ``config.json``)."""
    path = Path(tier_dir) / "config.json"
    try:
        if path.stat().st_size > MAX_TIER_JSON:
            raise ModelError(f"{path} is larger than {MAX_TIER_JSON} bytes")
        config = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ModelError(f"{tier_dir} has no config.json; not a tier directory") from exc
    except ValueError as exc:
        raise ModelError(f"{path} is not JSON: {exc}") from exc
    if isinstance(config, dict):
        for key in _BLOCK_COUNT_KEYS:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_BLOCKS:
                return value
    raise ModelError(f"{path} states no block count ({' / '.join(_BLOCK_COUNT_KEYS)})")


def _identity(n_blocks: int | None, child: TierInfo) -> dict[int, int]:
    if n_blocks is None:
        raise ModelError(f"mapping tier {child.tier_id} block for block needs its block count")
    if not 0 < n_blocks <= MAX_BLOCKS:
        raise ModelError(f"block count {n_blocks} of tier {child.tier_id} is out of range")
    return {i: i for i in range(n_blocks)}


def block_map(child: TierInfo, parent: TierInfo, *, n_blocks: int | None = None) -> dict[int, int]:
    """Child block index -> parent block index.

    The same tier (same weights CID) maps block for block; so does an int8
    tier to its source.  A student (``child.teacher_cid`` is the parent's CID,
    ``layers`` non-empty) maps block ``i`` to ``layers[i]``.  ``n_blocks`` is
    the child's block count (:func:`tier_blocks`), needed for the identity and
    checked against ``layers`` for a student.  Anything else is refused.
    """
    if child.task != parent.task or child.labels != parent.labels:
        raise ModelError(
            f"tiers {child.tier_id} and {parent.tier_id} differ in task or labels; "
            "their heads cannot be exchanged"
        )
    if child.weights_cid == parent.weights_cid:
        return _identity(n_blocks, child)
    if child.teacher_cid is None or child.teacher_cid != parent.weights_cid:
        raise ModelError(
            f"tier {child.tier_id} ({child.weights_cid}) is neither tier {parent.tier_id} "
            f"({parent.weights_cid}) nor derived from it; no block mapping between them"
        )
    if not child.layers:  # an int8 (or other same-depth) copy of the parent
        return _identity(n_blocks, child)
    layers = child.layers
    if len(set(layers)) != len(layers) or min(layers) < 0 or max(layers) >= MAX_BLOCKS:
        raise ModelError(f"tier {child.tier_id} lists invalid teacher layers {list(layers)}")
    if n_blocks is not None and n_blocks != len(layers):
        raise ModelError(
            f"tier {child.tier_id} has {n_blocks} blocks but keeps {len(layers)} teacher layers"
        )
    return dict(enumerate(layers))


def tier_block_map(child_tier_dir: Path, parent_tier_dir: Path) -> dict[int, int]:
    """:func:`block_map` for two tier directories, checked against both block counts."""
    child, parent = read_tier_info(child_tier_dir), read_tier_info(parent_tier_dir)
    mapping = block_map(child, parent, n_blocks=tier_blocks(child_tier_dir))
    parent_blocks = tier_blocks(parent_tier_dir)
    if max(mapping.values()) >= parent_blocks:
        raise ModelError(
            f"tier {child.tier_id} maps onto block {max(mapping.values())} of tier "
            f"{parent.tier_id}, which has {parent_blocks} blocks"
        )
    return mapping


# --- adapters ---------------------------------------------------------------------------------


def _check_mapping(mapping: Mapping[int, int]) -> None:
    if not mapping:
        raise ModelError("the block mapping is empty")
    for key, value in mapping.items():
        for index in (key, value):
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ModelError(f"block mapping {key!r} -> {value!r}: indices must be ints >= 0")
    if len(set(mapping.values())) != len(mapping):
        raise ModelError("the block mapping sends two child blocks to one parent block")


def _first_index(path: str) -> int | None:
    """Position of the first all-digit segment of a dotted module path (None if none)."""
    for position, segment in enumerate(path.split(".")):
        if segment.isdigit():
            return position
    return None


def block_list_prefix(state: Mapping[str, Any]) -> str | None:
    """The dotted path of the block list the adapter's LoRA modules sit in (None: none do).

    Found from the LoRA factor names: the path before their first numeric
    segment (``bert.encoder.layer``, ``model.layers``, ``transformer.h``).
    Modules in two different block lists are refused (which list would map?).
    """
    prefixes: set[str] = set()
    for key in state:
        if not (key.endswith(LORA_A_SUFFIX) or key.endswith(LORA_B_SUFFIX)):
            continue
        path = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        position = _first_index(path)
        if position is not None:
            prefixes.add(".".join(path.split(".")[:position]))
    if len(prefixes) > 1:
        raise ModelError(f"adapter modules lie in several block lists {sorted(prefixes)[:4]}")
    return prefixes.pop() if prefixes else None


class _Renamer:
    """Renames dotted paths whose block index follows ``prefix``; None means dropped."""

    def __init__(
        self, prefix: str | None, mapping: Mapping[int, int], direction: Direction
    ) -> None:
        if direction == "down":
            self.table = {parent: child for child, parent in mapping.items()}
        elif direction == "up":
            self.table = dict(mapping)
        else:
            raise ModelError(f"direction must be 'down' or 'up', not {direction!r}")
        self.direction = direction
        self.head = None if prefix is None else (prefix + "." if prefix else "")

    def block(self, path: str) -> int | None:
        """The block index of ``path`` if it lies in the mapped block list."""
        if self.head is None or not path.startswith(self.head):
            return None
        segment = path[len(self.head) :].split(".", 1)[0]
        return int(segment) if segment.isdigit() else None

    def index(self, block: int, what: str) -> int | None:
        if block in self.table:
            return self.table[block]
        if self.direction == "down":
            return None  # a parent block the child does not have
        raise ModelError(f"{what} is in child block {block}, which the mapping does not cover")

    def path(self, path: str, what: str, *, config: bool = False) -> str | None:
        block = self.block(path)
        if block is None:
            # A head may hold numbered parts (a Sequential); a config name with a
            # block number outside the list (a shortened path) cannot be mapped safely.
            if config and self.head is not None and _first_index(path) is not None:
                raise ModelError(f"{what} {path!r} names a block outside {self.head}N")
            return path
        new = self.index(block, what)
        if new is None:
            return None
        rest = path[len(self.head or "") + len(str(block)) :]
        return f"{self.head}{new}{rest}"


def _map_names(names: Any, renamer: _Renamer, what: str) -> Any:
    if names is None or isinstance(names, str):
        return names  # None, or a suffix pattern PEFT matches in every block alike
    if not isinstance(names, list):
        raise AdapterError(f"adapter config {what} must be a list")
    out = {renamer.path(str(n), what, config=True) for n in names}
    return sorted(n for n in out if n is not None)


def _map_pattern(pattern: Any, renamer: _Renamer, what: str) -> dict[str, Any]:
    if not pattern:
        return {}
    if not isinstance(pattern, dict):
        raise AdapterError(f"adapter config {what} must be an object")
    out: dict[str, Any] = {}
    for key, value in pattern.items():
        new = renamer.path(str(key), what, config=True)
        if new is not None:
            out[new] = value
    return out


def _map_layers(layers: Any, renamer: _Renamer) -> Any:
    if layers is None:
        return None
    values = [layers] if isinstance(layers, int) else layers
    if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
        raise AdapterError("adapter config layers_to_transform must be an int or a list of ints")
    mapped = [renamer.index(v, "layers_to_transform") for v in values]
    return sorted(v for v in mapped if v is not None)


def map_config(
    config: Mapping[str, Any],
    prefix: str | None,
    mapping: Mapping[int, int],
    *,
    direction: Direction,
    base_model: str | None = None,
) -> dict[str, Any]:
    """The adapter config with its block-indexed names mapped (see :func:`map_adapter`)."""
    renamer = _Renamer(prefix, mapping, direction)
    out = dict(config)
    out["target_modules"] = _map_names(config.get("target_modules"), renamer, "target_modules")
    for key in ("rank_pattern", "alpha_pattern"):
        if key in config:
            out[key] = _map_pattern(config[key], renamer, key)
    if config.get("layers_to_transform") is not None:
        out["layers_to_transform"] = _map_layers(config["layers_to_transform"], renamer)
    if base_model is not None:
        out["base_model_name_or_path"] = base_model
    return out


def map_state(
    state: Mapping[str, NDArray[np.float32]],
    prefix: str | None,
    mapping: Mapping[int, int],
    *,
    direction: Direction,
) -> dict[str, NDArray[np.float32]]:
    """Adapter tensors renamed block by block; tensors outside the blocks pass through."""
    renamer = _Renamer(prefix, mapping, direction)
    out: dict[str, NDArray[np.float32]] = {}
    for key, value in state.items():
        if not key.startswith(PEFT_PREFIX):
            raise AdapterError(f"adapter tensor {key!r} is not PEFT-keyed")
        path = renamer.path(key[len(PEFT_PREFIX) :], "adapter tensor")
        if path is not None:
            out[PEFT_PREFIX + path] = value
    return out


def map_adapter(
    src_dir: Path,
    out_dir: Path,
    mapping: Mapping[int, int],
    *,
    direction: Direction,
    base_model: str | None = None,
) -> Path:
    """Write ``src_dir``'s adapter renamed block by block as the new adapter ``out_dir``.

    ``mapping`` is child block -> parent block (:func:`block_map`).  ``down``:
    ``src_dir`` is in the parent's space; child block ``i`` takes parent block
    ``mapping[i]`` and parent blocks outside the mapping are dropped.  ``up``:
    ``src_dir`` is in the child's space; child block ``i`` becomes parent block
    ``mapping[i]`` (a child block outside the mapping is an error).  Heads and
    other tensors outside the blocks pass through unchanged; ``target_modules``,
    ``rank_pattern``/``alpha_pattern`` and ``layers_to_transform`` follow the
    tensors; ``base_model`` (a tier id) replaces ``base_model_name_or_path``.
    """
    _check_mapping(mapping)
    adapter = read_adapter(src_dir)
    prefix = block_list_prefix(adapter.state)
    state = map_state(adapter.state, prefix, mapping, direction=direction)
    config = map_config(adapter.config, prefix, mapping, direction=direction, base_model=base_model)
    had_lora = any(k.endswith(LORA_A_SUFFIX) for k in adapter.state)
    if had_lora and not any(k.endswith(LORA_A_SUFFIX) for k in state):
        raise ModelError(
            f"mapping {dict(mapping)} keeps none of {src_dir}'s LoRA modules; wrong tiers?"
        )
    if isinstance(config.get("target_modules"), list) and had_lora and not config["target_modules"]:
        raise ModelError(f"mapping {dict(mapping)} keeps none of {src_dir}'s target modules")
    path = write_adapter(out_dir, state, config)
    logger.info(
        "mapped adapter %s %s to %s: %d of %d tensors, blocks %s",
        src_dir,
        direction,
        path,
        len(state),
        len(adapter.state),
        dict(mapping),
    )
    return path
