"""``p2phier demo --quick``: the real MiniLM + BBC News round trip, small enough for CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tests.cli.conftest import REPO, Runner, cli_env, run_p2phier


def test_cli_import_does_not_load_torch(tmp_path: Path) -> None:
    code = (
        "import sys; import p2phier.cli.main; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=cli_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.ml
def test_demo_quick_round_trip(cli: Runner, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = cli("demo", "--quick", "--dir", out, "--threads", "1", "--json", timeout=600)
    assert r.returncode == 0, r
    s = r.json()
    first, second = s["artifacts"]
    assert first["encoding"] == "fp32" and first["parent"] is None
    assert second["encoding"] == "int8-delta" and second["parent"] == first["cid"]
    # a delta is far smaller than the full adapter, and both are a tiny share of the model
    assert second["bytes"] < first["bytes"] / 2
    assert first["pct_of_full_model"] < 1.0
    assert s["car"]["verified"] is True and s["car"]["lineage"] == [second["cid"], first["cid"]]
    assert 0.0 <= s["accuracy_decoded"] <= 1.0
    assert abs(s["accuracy_diff_pts"]) <= 100 / s["test_articles"] + 1e-9  # at most 1 article

    unpacked = Path(s["unpacked"])
    tensors = load_file(str(unpacked / "adapter_model.safetensors"))
    assert any(k.endswith("lora_A.weight") for k in tensors)
    assert (out / "summary.json").is_file() and (out / "checkpoint-1").is_dir()

    # The exported CAR verifies on its own with the ordinary CLI, from an unrelated home.
    other = tmp_path / "other"
    other.mkdir()
    v = run_p2phier(other, "artifact", "verify", s["car"]["path"], "--json")
    assert v.returncode == 0, v
    assert v.json()["cid"] == second["cid"] and v.json()["encoding"] == "int8-delta"
