"""The report: report.json, report.md and PNG plots from a synthetic run record."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from p2phier.devnet.report import (
    PLOTS,
    Baselines,
    NodeInfo,
    NodeRound,
    RoundInfo,
    RunRecord,
    RunRecordError,
    load_run,
    summarise,
    tree_layout,
    verdict,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL = 90_000_000


def synthetic_run(isolated: float = 0.60) -> RunRecord:
    nodes = (
        NodeInfo("master", "master", "", None, "minilm", MODEL, trains=False),
        NodeInfo("en", "language", "en", "master", "minilm", MODEL, trains=False),
        NodeInfo("news", "domain", "en/news", "en", "minilm", MODEL, trains=False),
        NodeInfo("biz", "subdomain", "en/news/business", "news", "student", MODEL // 3),
        NodeInfo("tech", "subdomain", "en/news/tech", "news", "student", MODEL // 3),
        NodeInfo("dev", "device", "en/news/tech", "tech", "device", MODEL // 12),
    )
    acc = {"biz": (0.50, 0.70, 0.80), "tech": (0.40, 0.60, 0.70), "dev": (0.30, 0.50, 0.60)}
    rounds = []
    for r in (1, 2, 3):
        entries = [
            NodeRound(
                name,
                r,
                accuracy_own=acc[name][r - 1],
                bytes_in=50_000,
                bytes_out=80_000,
                version_bytes_in={"biz": 10_000, "tech": 10_000, "dev": 5_000}[name],
                update_bytes_in=20_000 if name == "tech" else 0,  # dev's update
                tier_bytes_in=7_500_000 if name == "dev" and r == 1 else 0,
                update_bytes_out=20_000,
                updates_sent=1,
                head_cid="bafkreigh2akiscaildc",
                train_s=2.0,
            )
            for name in acc
        ]
        entries.append(
            NodeRound(
                "news",
                r,
                accuracy_children=0.5 + 0.1 * r,
                bytes_out=160_000,
                update_bytes_in=40_000,
                updates_sent=2,
                decision="published" if r != 2 else "held",
                decision_reason="validation +0.02 >= margin" if r != 2 else "below margin",
                isolated=int(r == 3),
                isolated_peers=("dev",) if r == 3 else (),
                distrusted=("dev", "12D3KooWstranger") if r == 3 else (),
            )
        )
        rounds.append(RoundInfo(r, 30.0 + r, tuple(entries)))
    baselines = Baselines(
        isolated={"biz": isolated, "tech": isolated, "dev": isolated},
        central={"biz": 0.9, "tech": 0.8, "dev": 0.7},
        isolated_steps=24,
        central_steps=72,
        notes="synthetic",
    )
    return RunRecord("synthetic", 1.7e9, nodes, tuple(rounds), baselines, setup_s=12.5)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_report_files_exist_and_say_the_right_numbers(tmp_path: Path) -> None:
    run = synthetic_run()
    run.save(tmp_path)
    paths = write_report(load_run(tmp_path), tmp_path)
    assert sorted(p.name for p in paths) == sorted(["report.json", "report.md", *PLOTS])
    for name in PLOTS:
        width, height = png_size(tmp_path / name)
        assert width > 300 and height > 200
        assert (tmp_path / name).stat().st_size > 10_000  # real drawings, not empty canvases
    md = (tmp_path / "report.md").read_text()
    # final hierarchy accuracy: mean of 0.80, 0.70, 0.60 = 0.700; alone 0.600; central 0.800
    line = (
        "Verdict: the hierarchy helped: mean accuracy 0.700 vs 0.600 alone (+10.0 pts), "
        "0.800 central (-10.0 pts)."
    )
    assert md.count("Verdict:") == 1 and line in md
    assert "| biz | 0.800 | 0.600 | 0.900 |" in md
    assert "- round 3, news: isolated dev; distrusted dev, 12D3KooWstranger" in md
    assert md.count("- round ") - md.count(": published") - md.count(": held") == 1
    again = load_run(tmp_path)  # the names survive the run record's round trip
    assert again.rounds[2].nodes[-1].isolated_peers == ("dev",)
    assert "| **mean** | **0.700** | **0.600** | **0.800** |" in md
    # bytes: updates received (20 kB at tech, 40 kB at news) and versions received (10 + 10 +
    # 5 kB) = 85 kB; full models for the same transfers: one each from the three leaves
    # and two from news
    full = 30_000_000 + 30_000_000 + 7_500_000 + 2 * MODEL
    summary = json.loads((tmp_path / "report.json").read_text())["summary"]
    first = summary["rounds"][0]
    assert (first["wire_bytes"], first["update_bytes"], first["version_bytes"]) == (
        85_000, 60_000, 25_000)  # fmt: skip
    assert first["full_model_bytes"] == full
    assert first["pct_of_full"] == pytest.approx(100 * 85_000 / full)
    # each sender's update over its own full model, averaged: 20 kB of 30 MB, 30 MB, 7.5 MB
    assert first["update_pct_of_full"] == pytest.approx(
        100 * (20_000 / (MODEL // 3) * 2 + 20_000 / (MODEL // 12)) / 3
    )
    assert first["tier_bytes"] == 7_500_000 and summary["rounds"][1]["tier_bytes"] == 0
    # news after round 1 (0.6) and after the last (0.8) on its children's pooled data, against
    # its children's (biz 0.8, tech 0.7) mean on their own: 0.8 - 0.75
    news = summary["parents_vs_children_acc_pts"]["news"]
    assert news["after_round_1"] == pytest.approx(0.6) and news["after_last"] == pytest.approx(0.8)
    assert news["vs_children_pts"] == pytest.approx(5.0)
    assert set(summary["parents_vs_children_acc_pts"]) == {"news"}
    assert first["all_block_bytes"] == 3 * 50_000
    assert summary["rounds"][1]["held"] == ["news"] and summary["rounds"][0]["published"] == [
        "news"
    ]
    assert summary["final_accuracy_per_tier"] == pytest.approx({"student": 0.75, "device": 0.6})
    assert "- round 2, news: held (below margin)" in md
    assert json.loads((tmp_path / "report.json").read_text())["run"]["scenario"] == "synthetic"


def test_the_verdict_says_when_the_hierarchy_did_not_help(tmp_path: Path) -> None:
    worse = summarise(synthetic_run(isolated=0.9))
    assert worse["verdict"].startswith("Verdict: the hierarchy did NOT help (worse")
    tie = summarise(synthetic_run(isolated=0.7))
    assert tie["verdict"].startswith("Verdict: the hierarchy did NOT help (no better")
    assert verdict({"hierarchy": None}).startswith("Verdict: unknown")


def test_the_tree_layout_puts_layers_on_rows_and_parents_over_children() -> None:
    pos = tree_layout(synthetic_run())
    assert pos["master"][1] == 0 and pos["dev"][1] == -4
    assert pos["news"][0] == pytest.approx((pos["biz"][0] + pos["tech"][0]) / 2)
    assert pos["tech"][0] == pos["dev"][0]
    assert len({pos[n][0] for n in ("biz", "tech")}) == 2


def test_a_round_trip_through_json_keeps_the_record() -> None:
    run = synthetic_run()
    assert RunRecord.from_json(json.loads(json.dumps(run.to_json()))) == run


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format=9), "run.format: 9 is not known"),
        (lambda d: d["nodes"][0].update(layer="boss"), "run.nodes[0].layer: 'boss'"),
        (lambda d: d["nodes"][1].update(parent="ghost"), "run.nodes[1].parent: no node"),
        (lambda d: d["rounds"][0]["nodes"][0].update(accuracy_own=1.5), "is outside [0, 1]"),
        (lambda d: d["rounds"][0]["nodes"][0].update(bytes_in="x"), "bytes_in: must be an integer"),
        (lambda d: d["rounds"][0]["nodes"][0].update(extra=1), "extra: unknown field"),
        (lambda d: d["rounds"][0]["nodes"][0].update(isolated_peers=[1]), "not a list of names"),
        (lambda d: d["rounds"][0]["nodes"][0].update(distrusted="x"), "distrusted: must be a list"),
        (lambda d: d["rounds"][0]["nodes"][0].update(distrusted=["x"] * 5000), "not a list of"),
        (lambda d: d["baselines"]["isolated"].update(biz=-1), "isolated.biz: accuracy -1.0"),
        (lambda d: d.pop("nodes"), "run.nodes: missing"),
    ],
)
def test_a_bad_run_record_is_refused_naming_the_field(
    tmp_path: Path, edit: object, message: str
) -> None:
    data = synthetic_run().to_json()
    edit(data)  # type: ignore[operator]
    (tmp_path / "run.json").write_text(json.dumps(data))
    with pytest.raises(RunRecordError, match=r"run\.json: ") as info:
        load_run(tmp_path)
    assert message in str(info.value)


def test_a_missing_or_broken_run_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunRecordError, match="is not a devnet run directory"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(RunRecordError, match=r"run record .*run\.json: not JSON"):
        load_run(tmp_path)


def test_the_cli_regenerates_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from p2phier.cli.main import main

    synthetic_run().save(tmp_path)
    assert main(["devnet", "report", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"].startswith("Verdict: the hierarchy helped")
    assert all(Path(p).is_file() for p in out["files"])
    assert main(["devnet", "report", str(tmp_path / "nothing")]) == 2
    assert "is not a devnet run directory" in capsys.readouterr().err


def test_the_verdict_gives_intervals_when_the_held_out_sizes_are_recorded() -> None:
    """The held-out sets are small: the verdict says how far each gap could be noise."""
    import dataclasses

    from p2phier.devnet.stats import mean_gap_interval

    run = synthetic_run()
    sizes = {"biz": 40, "tech": 20, "dev": 8}
    nodes = tuple(dataclasses.replace(n, test_examples=sizes.get(n.name, 0)) for n in run.nodes)
    sized = dataclasses.replace(run, nodes=nodes)
    again = RunRecord.from_json(json.loads(json.dumps(sized.to_json())))
    assert {n.name: n.test_examples for n in again.nodes}["dev"] == 8
    compare = summarise(again)["comparison"]
    want = mean_gap_interval([(0.8, 0.6, 40), (0.7, 0.6, 20), (0.6, 0.6, 8)])
    assert compare["vs_isolated_ci_pts"] == pytest.approx(want)
    assert compare["vs_central_ci_pts"] == pytest.approx(
        mean_gap_interval([(0.8, 0.9, 40), (0.7, 0.8, 20), (0.6, 0.7, 8)])
    )
    line = summarise(again)["verdict"]
    assert f"(+10.0 ± {want:.1f} pts)" in line and "95% intervals" in line
    # without the sizes (an older run record) there is no interval, and no claim of one
    assert summarise(run)["comparison"]["vs_isolated_ci_pts"] is None
    assert "±" not in summarise(run)["verdict"]
