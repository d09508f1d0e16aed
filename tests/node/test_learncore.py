"""The learner's pure core (p2phier.node.learncore): saved state and what to do next."""

from __future__ import annotations

import json
from typing import Any

import pytest

from p2phier.node.learncore import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    CHILDREN,
    MAX_ROUNDS_KEPT,
    STATE_FORMAT,
    LearnerCore,
    LearnerState,
    LocalRef,
    Rebase,
    RunRound,
    SentRef,
    StateError,
    VersionRef,
    VersionSeen,
    Wait,
    pending_after_publish,
    probe_rounds,
    sends_held,
    wire_choice,
)

PARENT = "12D3KooWparent"


def _v(cid: str = "bafy-v1", author: str = PARENT, round_: int = 1) -> VersionSeen:
    return VersionSeen(author, cid, round_, None, "bafy-tier", 0)


def _ready(**kw: Any) -> LearnerState:
    st = LearnerState(tier={"dir": "/t", "tier_id": "x", "bundle_cid": "b"})
    st.base = VersionRef("bafy-v1", "/v1", 1)
    for k, v in kw.items():
        setattr(st, k, v)
    return st


# --- saved state -------------------------------------------------------------------------------
def test_state_round_trips_through_json_with_its_format() -> None:
    st = _ready(local=LocalRef("/l", "/v1", "/l0"), consumed=2, round=2, accuracy_own=0.5)
    st.domain_on = "/v1"
    st.sent = {"up": SentRef("bafy-u", PARENT, 3), "down": SentRef("bafy-d", CHILDREN, 0)}
    st.record_round(2, {"round": 2, "decision": "published"})
    data = json.loads(json.dumps(st.to_json()))
    assert data["format"] == STATE_FORMAT
    assert LearnerState.from_json(data) == st


def test_a_state_written_before_formats_existed_still_loads() -> None:
    legacy = {"tier": None, "tiers": {}, "base": {"cid": "c", "dir": "/d", "round": 3},
              "flat": None, "published": {}, "local": None, "consumed": 3, "round": 3,
              "rounds": {"3": {"round": 3}}, "seq": 7, "applied": []}  # fmt: skip
    st = LearnerState.from_json(legacy)
    assert st.base == VersionRef("c", "/d", 3) and st.round == 3 and st.seq == 7
    # format 1 had no record of what was sent: the next artifact of each stream is a keyframe
    assert LearnerState.from_json({**legacy, "format": 1}).sent == {}
    # format 2 had no "since": everything in the local adapter was learned since its rebase
    local = {"dir": "/l", "on": "/d"}
    assert LearnerState.from_json({**legacy, "format": 2, "local": local}).local == LocalRef(
        "/l", "/d", ""
    )
    # format 3 kept no domain part
    assert LearnerState.from_json({**legacy, "format": 3}).domain_on == ""


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "not a JSON object"),
        ({"format": 99}, "format 99"),
        ({"round": -1}, "'round'"),
        ({"round": True}, "'round'"),
        ({"base": {"cid": 1, "dir": "/d"}}, "'base'"),
        ({"local": {"dir": "/d"}}, "'local'"),
        ({"local": {"dir": "/d", "on": "/v", "since": 3}}, "'local'"),
        ({"tiers": {"a": 1}}, "'tiers'"),
        ({"rounds": {"1": 5}}, "'rounds'"),
        ({"applied": "x"}, "'applied'"),
        ({"accuracy_own": float("nan")}, "'accuracy_own'"),
        ({"sent": {"sideways": {"cid": "c", "to": "p", "chain": 0}}}, "'sent'.sideways"),
        ({"sent": {"up": {"cid": "c", "to": "p", "chain": -1}}}, "'sent'.up.chain"),
        ({"sent": {"up": {"cid": 1, "to": "p", "chain": 0}}}, "'sent'.up"),
        ({"format": True}, "format True"),
        ({"domain_on": 5}, "'domain_on'"),
    ],
)
def test_a_malformed_state_is_refused_naming_the_field(data: object, field: str) -> None:
    with pytest.raises(StateError, match=field):
        LearnerState.from_json(data)


def test_round_history_and_applied_list_are_bounded() -> None:
    st = LearnerState()
    for r in range(1, MAX_ROUNDS_KEPT + 50):
        st.record_round(r, {"round": r})
        st.record_applied({"round": r})
    assert len(st.rounds) == MAX_ROUNDS_KEPT
    assert min(map(int, st.rounds)) == 50  # the oldest went first
    assert len(st.applied) == 32 and st.applied[-1] == {"round": MAX_ROUNDS_KEPT + 49}


# --- decisions ---------------------------------------------------------------------------------
def test_a_new_parent_version_is_applied_before_any_round() -> None:
    core = LearnerCore(is_root=False)
    core.request_round(2)
    core.version_seen(_v("bafy-v2", round_=2))
    assert core.next(_ready(), PARENT, 0.0) == Rebase(_v("bafy-v2", round_=2))


def test_the_version_already_applied_is_not_applied_again() -> None:
    core = LearnerCore(is_root=False)
    core.version_seen(_v("bafy-v1"))
    assert core.next(_ready(), PARENT, 0.0) == Wait("idle: no round requested")


def test_only_the_current_parents_version_counts() -> None:
    core = LearnerCore(is_root=False)
    core.version_seen(_v("bafy-old", author="12D3KooWformer"))
    assert isinstance(core.next(_ready(), PARENT, 0.0), Wait)


def test_a_requested_round_runs_once_ready_and_a_missed_round_is_joined_not_replayed() -> None:
    core = LearnerCore(is_root=False)
    core.request_round(1)
    core.request_round(3)
    core.request_round(2)  # never goes back
    assert core.next(_ready(round=0), PARENT, 0.0) == RunRound(3)
    assert core.next(_ready(round=3), PARENT, 0.0) == Wait("idle: no round requested")
    with pytest.raises(ValueError):
        core.request_round(0)


def test_a_node_without_a_parent_or_a_first_version_says_what_it_waits_for() -> None:
    core = LearnerCore(is_root=False)
    core.request_round(1)
    no_base = _ready(base=None)
    assert core.next(no_base, None, 0.0) == Wait("round 1 waits for a parent")
    wait = core.next(no_base, PARENT, 0.0)
    assert isinstance(wait, Wait) and f"first version from parent {PARENT}" in wait.reason
    assert core.next(_ready(tier=None), PARENT, 0.0) == Wait("round 1 waits for this node's tier")


def test_the_root_needs_no_parent_version() -> None:
    core = LearnerCore(is_root=True)
    core.request_round(1)
    assert core.next(_ready(base=None), None, 0.0) == RunRound(1)


def test_a_failed_round_is_retried_with_growing_backoff_until_it_succeeds() -> None:
    core = LearnerCore(is_root=False)
    core.request_round(1)
    st = _ready()
    at = core.failed("round", 100.0)
    assert at == 100.0 + BACKOFF_MIN_S
    wait = core.next(st, PARENT, at - 0.1)
    assert isinstance(wait, Wait) and "failed 1 time(s)" in wait.reason
    assert core.next(st, PARENT, at) == RunRound(1)  # the round is not recorded as done
    assert core.failed("round", at) == at + 2 * BACKOFF_MIN_S
    for _ in range(20):
        last = core.failed("round", 0.0)
    assert last == BACKOFF_MAX_S  # capped
    core.succeeded("round")
    assert core.failures("round") == 0 and core.next(st, PARENT, 0.0) == RunRound(1)


def test_a_failed_rebase_backs_off_and_blocks_rounds_on_the_old_version_meanwhile() -> None:
    core = LearnerCore(is_root=False)
    core.request_round(2)
    core.version_seen(_v("bafy-v2", round_=2))
    at = core.failed("rebase", 0.0)
    wait = core.next(_ready(), PARENT, 1.0)
    assert isinstance(wait, Wait) and wait.reason.startswith("rebase on bafy-v2 failed")
    assert core.next(_ready(), PARENT, at) == Rebase(_v("bafy-v2", round_=2))


# --- the wire: delta or keyframe ----------------------------------------------------------------
def _choose(previous: SentRef | None, to: str = PARENT, **kw: Any) -> str | None:
    args: dict[str, Any] = {"encoding": "int8-delta", "keyframe_every": 8} | kw
    return wire_choice(previous, to, **args).parent


def test_the_first_artifact_of_a_stream_is_a_keyframe_and_the_next_a_delta_on_it() -> None:
    assert _choose(None) is None
    assert _choose(SentRef("bafy-u1", PARENT, 0)) == "bafy-u1"
    assert _choose(SentRef("bafy-d1", CHILDREN, 5), CHILDREN) == "bafy-d1"


def test_a_new_receiver_gets_a_keyframe() -> None:
    """A new parent never received the previous update: a delta on it would make the
    parent fetch the whole lineage."""
    choice = wire_choice(SentRef("bafy-u1", PARENT, 0), "12D3KooWother",
                         encoding="int8-delta", keyframe_every=8)  # fmt: skip
    assert choice.parent is None and "receiver changed" in choice.reason


@pytest.mark.parametrize("every", [1, 2, 8, 64])
def test_a_keyframe_comes_at_least_every_keyframe_every_artifacts(every: int) -> None:
    previous: SentRef | None = None
    kinds = []
    for i in range(3 * every):
        parent = _choose(previous, keyframe_every=every)
        kinds.append(parent is None)
        chain = previous.chain + 1 if parent is not None and previous else 0
        previous = SentRef(f"bafy-{i}", PARENT, chain)
        assert previous.chain < every  # a reader walks at most ``every`` artifacts
    assert kinds == ([True] + [False] * (every - 1)) * 3


def test_fp16_sends_full_adapters_only() -> None:
    choice = wire_choice(SentRef("bafy-u1", PARENT, 0), PARENT, encoding="fp16",
                         keyframe_every=8)  # fmt: skip
    assert choice.parent is None and "fp16" in choice.reason


# --- following the parent's versions ------------------------------------------------------------
def test_a_follower_runs_a_round_on_each_new_parent_version() -> None:
    """Issue 15: a node outside the devnet learns on its own: its parent's new version,
    once applied, starts its next round (one past both the version's and its own last)."""
    core = LearnerCore(is_root=False, follow_parent=True)
    st = _ready(round=0)
    assert core.rebased(_v("bafy-v0", round_=0), st) == 1
    assert core.next(st, PARENT, 0.0) == RunRound(1)
    st.round = 1
    # a later version of the parent's round 5: round 6
    assert core.rebased(_v("bafy-v5", round_=5), st) == 6
    st.round = 6
    # the parent relays its own parent's version under an older round: still one more round,
    # so that the node's update is on the parent's current version
    assert core.rebased(_v("bafy-relay", round_=5), st) == 7
    assert not core.timer_drives_rounds()


def test_without_following_or_at_the_root_versions_start_no_round() -> None:
    st = _ready(round=2)
    assert LearnerCore(is_root=False).rebased(_v(round_=3), st) is None
    root = LearnerCore(is_root=True, follow_parent=True)
    assert root.rebased(_v(round_=3), st) is None
    assert root.timer_drives_rounds() and LearnerCore(is_root=False).timer_drives_rounds()


def test_a_held_aggregate_goes_up_unless_it_made_the_validation_set_worse() -> None:
    # held because it did not improve enough (or a held domain dropped): still sent up
    assert sends_held(0.55, 0.55, tolerance=0.01)
    assert sends_held(0.55, 0.545, tolerance=0.01)
    assert sends_held(0.5, 0.6, tolerance=0.01)
    # worse than the rule tolerates: kept home (seed 1's healthcare: 0.65 -> 0.20)
    assert not sends_held(0.65, 0.2, tolerance=0.01)
    assert not sends_held(0.65, 0.6, tolerance=0.02)
    # no validation set to judge by: sent, the grandparent screens it
    assert sends_held(None, None, tolerance=0.01) and sends_held(0.5, None, tolerance=0.01)


def test_updates_that_came_while_a_round_was_published_are_kept() -> None:
    """The parent published round 2 (on flat v1; its new version is v2).  What it aggregated
    goes; a child's round-2 update on v1 that came during the publishing stays for the late
    screen, one already on v2 for round 3; one on a flat it no longer screens against goes."""

    def up(author: str, cid: str, base: str | None, round_: int = 2) -> VersionSeen:
        return VersionSeen(author, cid, round_, base, "bafy-tier", 0)

    a, b = up("a", "u-a", "v1"), up("b", "u-b", "v1")
    late, early, stale = up("c", "u-c", "v1"), up("d", "u-d", "v2", 3), up("e", "u-e", "v0", 1)
    held = {"a": a, "b": b, "c": late, "d": early, "e": stale, "x": up("x", "u-x", None)}
    kept = pending_after_publish(held, {"a": a, "b": b}, {"v2", "v1"})
    assert kept == {"c": late, "d": early}
    # a child that sent a newer update on v1 while the round was being published keeps it
    b2 = up("b", "u-b2", "v1")
    assert pending_after_publish({**held, "b": b2}, {"a": a, "b": b}, {"v2"}) == {"d": early}
    assert pending_after_publish({**held, "b": b2}, {"a": a, "b": b}, {"v1", "v2"})["b"] == b2


def test_a_parent_that_does_not_train_probes_with_everything_that_has_arrived() -> None:
    """The probe set: a training node's is what it trained on (its probe matches its own
    update); a node that never trains never advances ``consumed``, and its probe set is
    everything arrived by the round (with ``consumed`` it was empty, and every
    probe-scored round failed with "needs the parent's probe update")."""
    assert probe_rounds(trains=True, consumed=2, round_=3) == 2
    assert probe_rounds(trains=False, consumed=0, round_=3) == 3
    assert probe_rounds(trains=False, consumed=0, round_=0) == 0
