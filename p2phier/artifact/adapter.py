"""PEFT LoRA adapters: the parsed ``adapter_config.json`` and the checks that tie it to tensors.

Owns :class:`AdapterConfig` and :func:`check_adapter_tensors`.  An adapter is
accepted only when PEFT would load it *and it would change something*:

* tensor names follow PEFT (``base_model.model.<module>.lora_A.weight``), A is
  ``[r, in]`` and B ``[out, r]`` with r from ``rank_pattern`` or ``r``, every
  A has its B, other tensors belong to ``modules_to_save``;
* every LoRA tensor's module is one ``target_modules`` selects (PEFT's own
  matching: exact name or ``.``-suffix, ``layers_to_transform`` /
  ``layers_pattern``, ``exclude_modules``, never a ``modules_to_save``
  module).  A tensor for a module PEFT does not target is silently ignored by
  PEFT at load time, so an adapter built that way is a no-op;
* every ``target_modules`` entry selects at least one module that has tensors
  (an entry that selects none makes PEFT build a fresh, zero-B layer: a no-op
  there, or ``from_pretrained`` raises when nothing matches at all);
* when the base model's module names are known (``base_modules``), the
  adapted modules are exactly the base modules the config targets, and all of
  them exist in the base model.

Configs are hostile: ``target_modules`` and ``exclude_modules`` must be lists
of plain dotted names (PEFT reads a string as a regular expression, which a
peer must not get to run), ``layers_pattern`` plain names, and
``target_parameters`` (parametrisation LoRA) is refused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2phier.artifact.tensors import strict_json_object
from p2phier.errors import TensorFileError

PEFT_PREFIX = "base_model.model."
LORA_SUFFIXES = {
    ".lora_A.weight": ("A", 0),
    ".lora_B.weight": ("B", 1),
    ".lora_embedding_A": ("A", 0),
    ".lora_embedding_B": ("B", 1),
}
MAX_RANK = 4096
MAX_NAMES = 10_000  # entries of target_modules / exclude_modules / layers_to_transform
_MODULE_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_LAYER_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,200}")
# rank_pattern keys are regular expressions in PEFT; only plain dotted names are
# accepted here so a hostile config cannot smuggle in a catastrophic regex.
_PATTERN_KEY_RE = re.compile(r"[A-Za-z0-9_.]{1,200}")


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """The parts of a PEFT LoRA ``adapter_config.json`` that shape and place its tensors."""

    r: int
    rank_pattern: tuple[tuple[str, int], ...]
    modules_to_save: tuple[str, ...]
    base_model_name_or_path: str | None
    raw: Mapping[str, Any]
    target_modules: tuple[str, ...] = ()
    exclude_modules: tuple[str, ...] = ()
    layers_to_transform: frozenset[int] | None = None
    layers_pattern: tuple[str, ...] = ()

    def rank_for(self, module: str) -> int:
        """Rank of ``module`` as PEFT resolves it (first matching rank_pattern key, else r)."""
        for key, rank in self.rank_pattern:
            if re.match(rf"(.*\.)?({key})$", module):
                return rank
        return self.r

    def targets(self, module: str) -> bool:
        """Whether PEFT would put a LoRA layer on ``module`` (``check_target_module_exists``)."""
        if _suffix_match(module, self.exclude_modules):
            return False
        if any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", module) for m in self.modules_to_save):
            return False
        if module in self.target_modules:
            return True
        if not _suffix_match(module, self.target_modules):
            return False
        if not self.layers_to_transform:
            return True
        return self._layer_index(module) in self.layers_to_transform

    def _layer_index(self, module: str) -> int | None:
        # PEFT matches the *first* numbered segment (not a nested expert index).
        if not self.layers_pattern:
            found = re.match(r".*?\.[^.]*\.(\d+)\.", module)
        else:
            found = None
            for pattern in self.layers_pattern:
                found = re.match(rf"(?:^|.*?\.){re.escape(pattern)}\.(\d+)\.", module)
                if found is not None:
                    break
        return int(found.group(1)) if found else None


def _suffix_match(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.endswith("." + n) for n in names)


def _name_list(raw: Mapping[str, Any], key: str, *, required: bool) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None and not required:
        return ()
    if isinstance(value, str):
        raise TensorFileError(
            f"adapter config {key} is a string, which PEFT reads as a regular expression; "
            "a p2phier adapter lists its module names"
        )
    if (
        not isinstance(value, list)
        or len(value) > MAX_NAMES
        or not all(isinstance(n, str) and _MODULE_RE.fullmatch(n) for n in value)
    ):
        raise TensorFileError(f"adapter config {key} must be a list of dotted module names")
    if required and not value:
        raise TensorFileError(f"adapter config {key} is empty: the adapter adapts nothing")
    return tuple(value)


def _layers(raw: Mapping[str, Any]) -> tuple[frozenset[int] | None, tuple[str, ...]]:
    value = raw.get("layers_to_transform")
    if value is None or value == []:
        layers = None
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        layers = frozenset({value})
    elif (
        isinstance(value, list)
        and len(value) <= MAX_NAMES
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    ):
        layers = frozenset(value)
    else:
        raise TensorFileError("adapter config layers_to_transform must be layer indices")
    pattern = raw.get("layers_pattern")
    if pattern is None or pattern in ("", []):
        return layers, ()
    patterns = [pattern] if isinstance(pattern, str) else pattern
    if not isinstance(patterns, list) or not all(
        isinstance(p, str) and _LAYER_NAME_RE.fullmatch(p) for p in patterns
    ):
        raise TensorFileError("adapter config layers_pattern must name layers plainly")
    return layers, tuple(patterns)


def parse_adapter_config(data: bytes | memoryview, *, max_size: int) -> AdapterConfig:
    """Validate a PEFT LoRA adapter config (bounded JSON, LoRA only, sane ranks and targets)."""
    if len(data) > max_size:
        raise TensorFileError(f"adapter config is {len(data)} bytes, over the limit of {max_size}")
    raw = strict_json_object(data, "adapter_config.json")
    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        raise TensorFileError(
            f"adapter config peft_type is {peft_type!r:.40}; only LORA is supported"
        )
    if raw.get("use_dora"):
        raise TensorFileError("DoRA adapters (use_dora) are not supported")
    if raw.get("target_parameters"):
        raise TensorFileError("adapter config target_parameters (parameter LoRA) is not supported")
    r = raw.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= MAX_RANK:
        raise TensorFileError(
            f"adapter config r must be an integer in 1..{MAX_RANK}, not {r!r:.40}"
        )
    pattern_raw = raw.get("rank_pattern") or {}
    if not isinstance(pattern_raw, dict):
        raise TensorFileError("adapter config rank_pattern must be an object")
    pattern: list[tuple[str, int]] = []
    for key, rank in pattern_raw.items():
        if not _PATTERN_KEY_RE.fullmatch(key):
            raise TensorFileError(
                f"rank_pattern key {key[:60]!r} is not a plain dotted module name"
            )
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_RANK:
            raise TensorFileError(f"rank_pattern[{key!r}] must be an integer in 1..{MAX_RANK}")
        pattern.append((key, rank))
    mts_raw = raw.get("modules_to_save") or []
    if not isinstance(mts_raw, list) or not all(
        isinstance(m, str) and _MODULE_RE.fullmatch(m) for m in mts_raw
    ):
        raise TensorFileError("adapter config modules_to_save must be a list of module names")
    base = raw.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise TensorFileError("adapter config base_model_name_or_path must be a string")
    targets = _name_list(raw, "target_modules", required=True)
    excluded = _name_list(raw, "exclude_modules", required=False)
    layers, layers_pattern = _layers(raw)
    return AdapterConfig(
        r,
        tuple(pattern),
        tuple(mts_raw),
        base,
        raw,
        targets,
        excluded,
        layers,
        layers_pattern,
    )


def canonical_config_bytes(config: AdapterConfig, base_model_id: str) -> bytes:
    """The config as stored: sorted JSON, with the base model named by id, not a local path."""
    raw = dict(config.raw)
    raw["base_model_name_or_path"] = base_model_id
    return (json.dumps(raw, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode()


def _module_of(name: str) -> tuple[str, str | None, int]:
    """Split a PEFT tensor name into (module, 'A'/'B'/None, rank axis)."""
    if not name.startswith(PEFT_PREFIX):
        raise TensorFileError(
            f"tensor {name!r} does not follow PEFT naming ({PEFT_PREFIX}<module>.lora_A.weight)"
        )
    rest = name[len(PEFT_PREFIX) :]
    for suffix, (kind, axis) in LORA_SUFFIXES.items():
        if rest.endswith(suffix):
            module = rest[: -len(suffix)]
            if not _MODULE_RE.fullmatch(module):
                raise TensorFileError(f"tensor {name!r} names an invalid module {module!r}")
            return module, kind, axis
    if not _MODULE_RE.fullmatch(rest):
        raise TensorFileError(f"tensor {name!r} names an invalid module path")
    return rest, None, 0


def check_adapter_tensors(
    config: AdapterConfig,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    base_modules: Collection[str] | None = None,
) -> None:
    """Tensor names and shapes must be what PEFT builds for this config, and adapt something.

    ``base_modules``: the base model's module names (``named_modules()``), when
    known; then the adapted modules must be exactly the ones the config targets
    there.
    """
    if not shapes:
        raise TensorFileError("adapter has no tensors")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        module, kind, axis = _module_of(name)
        if kind is None:
            owner = module.rsplit(".", 1)[0] if "." in module else module
            if not any(owner == m or owner.endswith("." + m) for m in config.modules_to_save):
                raise TensorFileError(
                    f"tensor {name!r} is neither a LoRA A/B weight nor part of modules_to_save"
                )
            continue
        if len(shape) not in (2, 4):
            raise TensorFileError(f"LoRA tensor {name!r} has {len(shape)} dimensions")
        rank = config.rank_for(module)
        if shape[axis] != rank:
            raise TensorFileError(
                f"LoRA {kind} tensor {name!r} has shape {list(shape)} but the config gives "
                f"module {module!r} rank {rank}"
            )
        pairs.setdefault(module, {})[kind] = shape
    for module, halves in sorted(pairs.items()):
        if set(halves) != {"A", "B"}:
            missing = ({"A", "B"} - set(halves)).pop()
            raise TensorFileError(f"LoRA module {module!r} has no lora_{missing} tensor")
        if len(halves["A"]) != len(halves["B"]):
            raise TensorFileError(f"LoRA module {module!r} has A and B of different ranks")
    _check_targeting(config, set(pairs), base_modules)


def _check_targeting(
    config: AdapterConfig, adapted: set[str], base_modules: Collection[str] | None
) -> None:
    shown = list(config.target_modules[:6])
    for module in sorted(adapted):
        if not config.targets(module):
            raise TensorFileError(
                f"the adapter has LoRA tensors for {module!r}, which target_modules {shown} "
                "does not select: PEFT would ignore them (the adapter would change nothing there)"
            )
    for key in config.target_modules:
        if not any(module == key or module.endswith("." + key) for module in adapted):
            raise TensorFileError(
                f"target_modules names {key!r} but the adapter has no LoRA tensors for any "
                "module it selects: PEFT would add an untrained layer there (or fail to load)"
            )
    if base_modules is None:
        return
    base = set(base_modules)
    unknown = sorted(adapted - base)
    if unknown:
        raise TensorFileError(
            f"the adapter adapts {unknown[:3]}, which the base model does not have "
            f"({len(unknown)} module(s))"
        )
    expected = {m for m in base if config.targets(m)}
    lacking = sorted(expected - adapted)
    if lacking:
        raise TensorFileError(
            f"target_modules selects {lacking[:3]} in the base model but the adapter has no "
            f"tensors for them ({len(lacking)} module(s)): PEFT would add untrained layers"
        )


def module_names_from_weights(tensor_names: Collection[str]) -> set[str]:
    """A model's module names as far as its weights show them: every prefix of every name.

    ``bert.encoder.layer.0.attention.self.query.weight`` gives
    ``bert``, ``bert.encoder``, ... ``bert.encoder.layer.0.attention.self.query``
    (parameter-free modules such as dropouts are absent, and LoRA targets only
    modules with weights).
    """
    out: set[str] = set()
    for name in tensor_names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return out


MAX_WEIGHTS_HEADER = 16 * 1024 * 1024  # a model's safetensors header (names, shapes, offsets)


def module_names_from_file(
    path: str | os.PathLike[str], *, skip_suffixes: tuple[str, ...] = ()
) -> set[str]:
    """A model's module names from its safetensors weights file, reading the header only.

    Tensor names ending in one of ``skip_suffixes`` are left out (side tensors
    such as int8 scales).
    """
    src = Path(path)
    try:
        with open(src, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= MAX_WEIGHTS_HEADER:
                raise TensorFileError(
                    f"{src} has a safetensors header of {size} bytes; refused "
                    f"(at most {MAX_WEIGHTS_HEADER})"
                )
            raw = fh.read(size)
    except OSError as exc:
        raise TensorFileError(f"cannot read {src}: {exc.strerror or exc}") from None
    if len(raw) != size:
        raise TensorFileError(f"{src} ends inside its safetensors header")
    header = strict_json_object(raw, f"the safetensors header of {src}")
    names = [n for n in header if n != "__metadata__" and not n.endswith(skip_suffixes)]
    return module_names_from_weights(names)
