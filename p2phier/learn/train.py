"""LoRA sessions: a tier, its ancestors' adapters merged in, one trainable adapter on top.

What this module owns:

* the adapter directory format (PEFT's: ``adapter_config.json`` and
  ``adapter_model.safetensors``, written canonically so equal adapters have
  equal bytes), reading it back with size limits and checks, and merging an
  adapter into a model's weights (``W += scaling * B @ A``; heads replaced);
* :class:`Session`: a copy of a tier's model with a stack of ancestor adapters
  merged (each level's adapter is relative to everything above it) and a
  trainable LoRA adapter (attention projections found by
  :func:`~p2phier.learn.models.find_lora_targets`, plus the task head);
* the training loops (classifier cross-entropy, causal-LM next-token loss,
  with a hook for extra loss terms and custom batches) and evaluation
  (accuracy, logits, perplexity), all seeded so runs repeat exactly.

Blocking CPU work: run it in a worker thread or process, never on an event loop.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from p2phier.artifact.tensors import parse_safetensors, write_safetensors
from p2phier.fsutil import commit_dir, write_durable
from p2phier.learn.aggregate import (
    DELTA_SUFFIX,
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    LoraSpec,
    lora_to_effective,
)
from p2phier.learn.data import Example
from p2phier.learn.models import (
    ModelError,
    Tier,
    _linear_types,
    find_head_modules,
    find_lora_targets,
)
from p2phier.learn.prototypes import Prototypes, answer, ncm_where_better

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
MAX_ADAPTER_BYTES = 512 * 1024 * 1024
MAX_ADAPTER_CONFIG = 256 * 1024
_MODULE_NAME_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+){0,31}")


class AdapterError(ModelError):
    """An adapter directory is malformed or does not fit the model it is applied to."""


@dataclass(frozen=True)
class LoraSettings:
    """Shape of the trainable adapter."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    include_mlp: bool = False
    train_head: bool = True  # classifiers: the head is saved with the adapter
    #: the backbone's pooler trains with the head (off: only the task head, as PEFT's default,
    #: which keeps updates small: BERT's pooler alone is hidden x hidden values)
    train_pooler: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """One training run; ``seed`` fixes batch order, dropout and initialisation."""

    steps: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    max_length: int = 64
    seed: int = 0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size <= 0 or self.max_length <= 1:
            raise ModelError("steps >= 0, batch_size > 0 and max_length > 1 are required")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ModelError(f"learning rate must be a positive number, got {self.lr}")


# --- adapter files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Adapter:
    """An adapter read from disk: PEFT-keyed float32 tensors and its config."""

    state: dict[str, NDArray[np.float32]]
    config: dict[str, Any]

    @property
    def spec(self) -> LoraSpec:
        return LoraSpec.from_config(self.config)

    def effective(self) -> dict[str, NDArray[np.float32]]:
        """Merged ``scaling * B @ A`` per module plus the head tensors."""
        return lora_to_effective(self.state, self.spec)


def write_adapter(
    out_dir: Path, state: Mapping[str, NDArray[Any]], config: Mapping[str, Any]
) -> Path:
    """Write a PEFT adapter directory atomically; bytes depend only on the contents."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise AdapterError(f"{out_dir} already exists; adapters are immutable")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out_dir.parent))
    try:
        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
        for path, data in (
            (tmp / ADAPTER_WEIGHTS, write_safetensors(tensors, {"format": "pt"})),
            (tmp / ADAPTER_CONFIG, (json.dumps(config, sort_keys=True, indent=1) + "\n").encode()),
        ):
            write_durable(path, data)
        commit_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_adapter(adapter_dir: Path) -> Adapter:
    """Read and check an adapter directory (sizes first, then structure and finiteness)."""
    adapter_dir = Path(adapter_dir)
    cfg_path, w_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    for path, limit in ((cfg_path, MAX_ADAPTER_CONFIG), (w_path, MAX_ADAPTER_BYTES)):
        if not path.is_file():
            raise AdapterError(f"{adapter_dir} is not an adapter directory: {path.name} missing")
        if path.stat().st_size > limit:
            raise AdapterError(f"{path} is larger than {limit} bytes")
    try:
        config = json.loads(cfg_path.read_bytes())
    except ValueError as exc:
        raise AdapterError(f"{cfg_path} is not JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type") not in ("LORA", None):
        raise AdapterError(f"{cfg_path} is not a LoRA adapter config")
    for key in ("target_modules", "modules_to_save"):
        names = config.get(key)
        # PEFT treats a string as a regular expression: refuse it (and odd names)
        # rather than run a peer's regex.
        if names is not None and not (
            isinstance(names, list)
            and all(isinstance(n, str) and _MODULE_NAME_RE.fullmatch(n) for n in names)
        ):
            raise AdapterError(f"{cfg_path}: {key} must be a list of dotted module names")
    parsed = parse_safetensors(w_path.read_bytes(), max_header=1 << 20, max_tensors=20_000)
    state = {name: np.array(parsed.floats(name)) for name in sorted(parsed.infos)}
    for key in state:
        if not key.startswith(PEFT_PREFIX):
            raise AdapterError(f"{w_path}: tensor {key!r} is not PEFT-keyed")
    spec = LoraSpec.from_config(config)
    lora_to_effective(state, spec)  # checks A/B pairing and shapes
    return Adapter(state, config)


def apply_adapter(model: torch.nn.Module, adapter: Adapter) -> None:
    """Merge an adapter into ``model``'s weights in place (heads are replaced)."""
    params = dict(model.named_parameters())
    linear = _linear_types()
    with torch.no_grad():
        for key, value in adapter.effective().items():
            name = key[len(PEFT_PREFIX) :]
            if key.endswith(DELTA_SUFFIX):
                module_name = name[: -len(DELTA_SUFFIX)]
                try:
                    module = model.get_submodule(module_name)
                except AttributeError as exc:
                    raise AdapterError(f"adapter targets {module_name!r}, absent here") from exc
                if not isinstance(module, linear):
                    raise AdapterError(f"adapter targets {module_name!r}, which is not linear")
                delta = torch.from_numpy(np.array(value))
                weight: torch.Tensor = module.weight  # type: ignore[assignment]
                if not isinstance(module, torch.nn.Linear):  # Conv1D stores (in, out)
                    delta = delta.T
                if tuple(delta.shape) != tuple(weight.shape):
                    raise AdapterError(
                        f"adapter delta for {module_name} has shape {tuple(delta.shape)}, "
                        f"the model's weight {tuple(weight.shape)}"
                    )
                weight.add_(delta.to(weight.dtype))
            else:
                if name not in params or tuple(params[name].shape) != value.shape:
                    raise AdapterError(f"adapter tensor {name!r} does not fit this model")
                params[name].copy_(torch.from_numpy(np.array(value)))


# --- sessions ---------------------------------------------------------------------------------


@torch.no_grad()
def pooled_embeddings(
    tier: Tier, model: torch.nn.Module, texts: Sequence[str], max_length: int = 64, batch: int = 32
) -> NDArray[np.float32]:
    """Each text's unit-length mean-pooled last hidden state under ``model`` (``tier``'s
    model, adapted or not: ``tier.model`` is its base), a float32 array [n, hidden]."""
    outs = []
    for i in range(0, len(texts), batch):
        inputs = tier.encode(texts[i : i + batch], max_length)
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1].float()
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        outs.append(torch.nn.functional.normalize(pooled, dim=-1))
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outs).numpy().astype(np.float32)


class Session:
    """A trainable LoRA adapter on a tier with ancestor adapters merged underneath."""

    def __init__(
        self,
        tier: Tier,
        *,
        parents: Sequence[Path] = (),
        adapter: Path | None = None,
        settings: LoraSettings | None = None,
        seed: int = 0,
        answers: Sequence[str] = (),
    ) -> None:
        from peft import LoraConfig, get_peft_model

        self.tier = tier
        self.answers = self._answer_ids(answers)
        self.prototypes: Prototypes | None = None  # see use_prototypes
        self.ncm_tasks: tuple[str, ...] = ()
        self.settings = settings or LoraSettings()
        self.parents = tuple(Path(p) for p in parents)
        model = copy.deepcopy(tier.model)
        for parent in self.parents:
            apply_adapter(model, read_adapter(parent))
        targets = find_lora_targets(model, include_mlp=self.settings.include_mlp)
        heads = (
            find_head_modules(model)
            if tier.info.task == "classifier" and self.settings.train_head
            else []
        )
        if not self.settings.train_pooler:
            heads = [h for h in heads if ".pooler." not in f".{h}."]
        s = self.settings
        if adapter is not None:
            loaded = read_adapter(adapter)
            s = LoraSettings(
                r=int(loaded.config["r"]),
                alpha=float(loaded.config["lora_alpha"]),
                dropout=float(loaded.config.get("lora_dropout", 0.0)),
                include_mlp=s.include_mlp,
                train_head=bool(loaded.config.get("modules_to_save")),
                train_pooler=any(
                    ".pooler." in f".{h}." for h in loaded.config.get("modules_to_save") or []
                ),
            )
            targets = sorted(loaded.config.get("target_modules") or targets)
            heads = sorted(loaded.config.get("modules_to_save") or [])
            self.settings = s
        resolved = _resolve_targets(model, targets)
        if not resolved:
            raise AdapterError(f"target modules {targets[:4]} match nothing in this model")
        conv1d = [m for m in resolved if not isinstance(m, torch.nn.Linear)]
        config = LoraConfig(
            # GPT-2's Conv1D stores weights as (in, out): PEFT must transpose.
            fan_in_fan_out=bool(conv1d) and len(conv1d) == len(resolved),
            r=s.r,
            lora_alpha=s.alpha,  # type: ignore[arg-type]  # PEFT accepts floats
            lora_dropout=s.dropout,
            target_modules=targets,
            modules_to_save=heads or None,
            base_model_name_or_path=tier.info.tier_id,
        )
        torch.manual_seed(seed)  # LoRA A matrices are randomly initialised
        self.model: Any = get_peft_model(model, config)
        self.model.eval()
        if adapter is not None:
            self.load_state(loaded.state)

    # --- adapter state ---

    def adapter_config(self) -> dict[str, Any]:
        raw = self.model.peft_config["default"].to_dict()
        config = json.loads(json.dumps(raw, default=_jsonable))
        config["base_model_name_or_path"] = self.tier.info.tier_id
        config["inference_mode"] = True
        config.pop("auto_mapping", None)
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        return dict(config)

    def adapter_state(self) -> dict[str, NDArray[np.float32]]:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.model, save_embedding_layers=False)
        return {k: v.detach().cpu().float().numpy().copy() for k, v in sorted(state.items())}

    def load_state(self, state: Mapping[str, NDArray[Any]]) -> None:
        from peft import set_peft_model_state_dict

        current = self.adapter_state()
        if set(state) != set(current):
            raise AdapterError(
                "adapter tensors do not match this session "
                f"(missing {sorted(set(current) - set(state))[:3]}, "
                f"extra {sorted(set(state) - set(current))[:3]})"
            )
        for key, value in state.items():
            if tuple(value.shape) != tuple(current[key].shape):
                raise AdapterError(f"adapter tensor {key} has shape {tuple(value.shape)}")
        tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
        set_peft_model_state_dict(self.model, tensors)

    def load_heads(self, adapter: Adapter) -> None:
        """Take the head tensors (not the LoRA factors) from ``adapter``."""
        state = self.adapter_state()
        heads = {
            k: v
            for k, v in adapter.state.items()
            if not (k.endswith(LORA_A_SUFFIX) or k.endswith(LORA_B_SUFFIX))
        }
        for key, value in heads.items():
            if key not in state or state[key].shape != value.shape:
                raise AdapterError(f"head tensor {key} does not fit this session")
            state[key] = value
        self.load_state(state)

    def head_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters outside the LoRA factors (the head and pooler copies)."""
        return [p for n, p in self.model.named_parameters() if p.requires_grad and "lora_" not in n]

    def save(self, out_dir: Path) -> Path:
        return write_adapter(out_dir, self.adapter_state(), self.adapter_config())

    def effective(self) -> dict[str, NDArray[np.float32]]:
        return lora_to_effective(self.adapter_state(), LoraSpec.from_config(self.adapter_config()))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # --- labels and batches ---

    def label_ids(self, examples: Sequence[Example]) -> torch.Tensor:
        index = {label: i for i, label in enumerate(self.tier.labels)}
        try:
            return torch.tensor([index[e.label] for e in examples], dtype=torch.long)
        except KeyError as exc:
            raise ModelError(
                f"label {exc.args[0]!r} is not one of tier {self.tier.info.tier_id}'s labels "
                f"{list(self.tier.labels)}"
            ) from None

    # --- training ---

    def run(
        self,
        config: TrainConfig,
        loss_fn: Callable[[random.Random], torch.Tensor],
        params: Sequence[torch.nn.Parameter] | None = None,
    ) -> list[float]:
        """``config.steps`` optimiser steps on ``loss_fn(rng)``; returns the losses."""
        torch.manual_seed(config.seed)
        rng = random.Random(config.seed)
        trainable = list(params) if params is not None else self.trainable_parameters()
        optimiser = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        losses: list[float] = []
        self.model.train()
        try:
            for _ in range(config.steps):
                loss = loss_fn(rng)
                if not torch.isfinite(loss):
                    raise ModelError("training diverged (non-finite loss); lower the learning rate")
                optimiser.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                losses.append(float(loss.detach()))
        finally:
            self.model.eval()
        return losses

    def classifier_loss(
        self,
        examples: Sequence[Example],
        config: TrainConfig,
        extra: Callable[[], torch.Tensor] | None = None,
    ) -> Callable[[random.Random], torch.Tensor]:
        """Cross-entropy on batches sampled (epoch-wise shuffled) from ``examples``."""
        if not examples:
            raise ModelError("no examples to train on")
        sampler = EpochSampler(len(examples))

        def loss(rng: random.Random) -> torch.Tensor:
            batch = [examples[i] for i in sampler.take(config.batch_size, rng)]
            inputs = self.tier.encode([e.text for e in batch], config.max_length)
            out = self.model(**inputs, labels=self.label_ids(batch))
            total: torch.Tensor = out.loss
            if extra is not None:
                total = total + extra()
            return total

        return loss

    def train_classifier(
        self,
        examples: Sequence[Example],
        config: TrainConfig,
        extra: Callable[[], torch.Tensor] | None = None,
    ) -> list[float]:
        return self.run(config, self.classifier_loss(examples, config, extra))

    def train_lm(self, texts: Sequence[str], config: TrainConfig) -> list[float]:
        if not texts:
            raise ModelError("no texts to train on")
        sampler = EpochSampler(len(texts))

        def loss(rng: random.Random) -> torch.Tensor:
            batch = [texts[i] for i in sampler.take(config.batch_size, rng)]
            return self._lm_loss(batch, config.max_length)[0]

        return self.run(config, loss)

    def _lm_loss(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, int]:
        inputs = self.tier.encode(texts, max_length)
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        out = self.model(**inputs, labels=labels)
        tokens = int((labels[:, 1:] != -100).sum())
        return out.loss, tokens

    # --- evaluation ---

    @torch.no_grad()
    def logits(self, texts: Sequence[str], max_length: int = 64, batch: int = 32) -> torch.Tensor:
        outs = []
        for i in range(0, len(texts), batch):
            inputs = self.tier.encode(texts[i : i + batch], max_length)
            outs.append(self.model(**inputs).logits.float())
        if not outs:
            return torch.zeros((0, len(self.tier.labels)))
        return torch.cat(outs)

    @torch.no_grad()
    def embeddings(
        self, texts: Sequence[str], max_length: int = 64, batch: int = 32
    ) -> NDArray[np.float32]:
        """Each text's sentence embedding (a float32 numpy array [n, hidden]): the mean of the
        last hidden states over its tokens (the master tier's sentence-transformers pooling),
        scaled to unit length (:mod:`p2phier.learn.prototypes`), under this session's model."""
        return pooled_embeddings(self.tier, self.model, texts, max_length, batch)

    def use_prototypes(self, prototypes: Prototypes, ncm_tasks: Sequence[str] = ()) -> bool:
        """Answer with ``prototypes`` from now on (:func:`p2phier.learn.prototypes.answer`;
        the tasks in ``ncm_tasks`` by nearest prototype) where they lie in this tier's base
        space (embeddings of the tier's base model, no adapters); ``False``: they lie in
        another space, and are not used."""
        if prototypes.space != self.tier.info.weights_cid:
            return False
        self.prototypes = prototypes
        self.ncm_tasks = tuple(ncm_tasks)
        return True

    def validate_ncm(
        self,
        prototypes: Prototypes,
        examples: Sequence[Example],
        max_length: int = 64,
        current: Collection[str] = (),
    ) -> dict[str, dict[str, float]]:
        """Per task, this model's head and the nearest of ``prototypes`` on ``examples``
        (a validation set): :func:`p2phier.learn.prototypes.ncm_where_better` (``current``:
        the tasks answered by prototype now); empty where the prototypes lie in another
        space."""
        if prototypes.space != self.tier.info.weights_cid or not examples:
            return {}
        texts = [e.text for e in examples]
        logits = self.logits(texts, max_length).numpy()
        emb = pooled_embeddings(self.tier, self.tier.model, texts, max_length)
        answers = [self.tier.labels[i] for i in self.answers]
        return ncm_where_better(
            logits, emb, prototypes, self.tier.labels, [e.label for e in examples],
            answers=answers, current=current,
        )  # fmt: skip

    def _answer_ids(self, answers: Sequence[str]) -> tuple[int, ...]:
        """The label indices of ``answers`` (a domain's task: the labels its model answers
        with); empty: every label of the tier."""
        index = {label: i for i, label in enumerate(self.tier.labels)}
        unknown = sorted(set(answers) - set(index))
        if unknown:
            raise ModelError(
                f"answer labels {unknown} are not labels of tier {self.tier.info.tier_id} "
                f"{list(self.tier.labels)}"
            )
        return tuple(sorted(index[a] for a in set(answers)))

    def predict(self, texts: Sequence[str], max_length: int = 64) -> list[str]:
        """The most likely label of each text among the session's ``answers`` (a domain's
        model answers within its domain's task: a news article is never given a
        drug review's sentiment, however the shared head scores it)."""
        logits = self.logits(texts, max_length)
        if self.prototypes is not None and logits.numel():
            emb = pooled_embeddings(self.tier, self.tier.model, texts, max_length)
            answers = [self.tier.labels[i] for i in self.answers]
            return answer(
                logits.numpy(), emb, self.prototypes, self.tier.labels,
                answers=answers, ncm_tasks=self.ncm_tasks,
            )  # fmt: skip
        if self.answers and logits.numel():
            allowed = torch.tensor(self.answers, dtype=torch.long)
            ids = allowed[logits[:, allowed].argmax(dim=-1)].tolist()
        else:
            ids = logits.argmax(dim=-1).tolist()
        return [self.tier.labels[i] for i in ids]

    def accuracy(self, examples: Sequence[Example], max_length: int = 64) -> float:
        if not examples:
            raise ModelError("cannot measure accuracy on no examples")
        predicted = self.predict([e.text for e in examples], max_length)
        return sum(p == e.label for p, e in zip(predicted, examples, strict=True)) / len(examples)

    @torch.no_grad()
    def mean_loss(self, examples: Sequence[Example], max_length: int = 64) -> float:
        """Mean cross-entropy on ``examples`` (causal LMs: mean next-token negative
        log-likelihood of their texts)."""
        if self.tier.info.task == "causal_lm":
            return math.log(self.perplexity([e.text for e in examples], max_length))
        if not examples:
            raise ModelError("cannot measure a loss on no examples")
        logits = self.logits([e.text for e in examples], max_length)
        return float(torch.nn.functional.cross_entropy(logits, self.label_ids(examples)))

    @torch.no_grad()
    def label_mass(
        self, examples: Sequence[Example], max_length: int = 64
    ) -> tuple[float, dict[str, dict[str, float]]]:
        """Mean cross-entropy on ``examples`` and, per label they carry, the mean
        probability the model gives each label they carry on that label's examples (one
        forward pass; classifiers only)."""
        if self.tier.info.task == "causal_lm":
            raise ModelError("per-label probabilities need a classifier tier")
        if not examples:
            raise ModelError("cannot measure a loss on no examples")
        logits = self.logits([e.text for e in examples], max_length)
        loss = float(torch.nn.functional.cross_entropy(logits, self.label_ids(examples)))
        probs = torch.softmax(logits, dim=-1)
        present = sorted({e.label for e in examples})
        index = {label: i for i, label in enumerate(self.tier.labels)}
        cols = torch.tensor([index[label] for label in present], dtype=torch.long)
        mass: dict[str, dict[str, float]] = {}
        for label in present:
            rows = torch.tensor([i for i, e in enumerate(examples) if e.label == label])
            mean = probs[rows][:, cols].mean(dim=0).tolist()
            mass[label] = dict(zip(present, mean, strict=True))
        return loss, mass

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str], max_length: int = 64, batch: int = 16) -> float:
        """exp(mean next-token negative log-likelihood) over ``texts``."""
        total, count = 0.0, 0
        for i in range(0, len(texts), batch):
            loss, tokens = self._lm_loss(texts[i : i + batch], max_length)
            total += float(loss) * tokens
            count += tokens
        if count == 0:
            raise ModelError("cannot measure perplexity on no tokens")
        return math.exp(total / count)


def _resolve_targets(model: torch.nn.Module, targets: Sequence[str]) -> list[torch.nn.Module]:
    """Linear modules matched by PEFT's rule: the name equals a target or ends with ``.target``.

    (PEFT saves long target lists shortened to unique suffixes.)
    """
    linear = _linear_types()
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]


class EpochSampler:
    """Indices in shuffled epochs: every example is seen once before any repeats."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._queue: list[int] = []

    def take(self, k: int, rng: random.Random) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if not self._queue:
                self._queue = list(range(self.n))
                rng.shuffle(self._queue)
            out.append(self._queue.pop())
            if len(out) >= self.n and k > self.n:
                break
        return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if hasattr(obj, "value"):
        return obj.value
    return str(obj)


def adapter_keys_for(modules: Sequence[str]) -> list[str]:
    """PEFT keys of the LoRA factors for ``modules`` (for tests and checks)."""
    return [PEFT_PREFIX + m + s for m in modules for s in (LORA_A_SUFFIX, LORA_B_SUFFIX)]
