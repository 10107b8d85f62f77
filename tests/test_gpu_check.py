"""benchmarks/gpu_check.py at --size tiny on the CPU: every section runs and reports numbers.

One run of the whole command (parity, speed, SKELETON grid, and the 2-process gloo probes;
about 35 s on 2 cores) is shared by the checks below.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    gc = _load_script()
    argv = ["--device", "cpu", "--size", "tiny", "--out", str(out), "--dist-backend", "gloo"]
    # one thread: tiny models gain nothing from two, and a busy machine's descheduled second
    # OpenMP thread can stall every op (100x slower timings)
    threads = torch.get_num_threads()
    try:
        report = gc.main([*argv, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    return report, out


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_section_ran_and_files_written(run):
    report, out = run
    sections = report["sections"]
    assert list(sections) == ["parity", "speed", "skeleton", "dist"]
    for name, sec in sections.items():
        assert sec["status"] == "ok", (name, sec.get("error"), sec.get("traceback"))
        assert _positive(sec["wall_s"]) and _positive(sec["peak_rss_mib"]), name
    on_disk = json.loads((out / "gpu_check.json").read_text())  # strict JSON: no NaN
    assert on_disk["sections"].keys() == sections.keys()
    assert on_disk["environment"]["device_name"] == "CPU"
    md = (out / "gpu_check.md").read_text()
    assert "CPU" in md and on_disk["environment"]["torch"] in md
    for title in ("**Parity**", "**Speed**", "**SKELETON speed grid**", "**Two processes**"):
        assert title in md
    assert md.count("\n|") > 20  # the tables are there


def test_parity_fp32_exact_bf16_close(run):
    models = run[0]["sections"]["parity"]["models"]
    assert any(k.startswith("llama") for k in models) and any(k.startswith("bert") for k in models)
    for name, rows in models.items():
        fp32, bf16 = rows["cpu_float32"], rows["cpu_bfloat16"]
        assert "failed" not in fp32 and "failed" not in bf16, (name, rows)
        assert fp32["max_abs_diff"] < 1e-6 and fp32["rel_max_diff"] < 1e-6
        assert fp32["spearman_mean_act"] > 1 - 1e-9 and fp32["top1pct_overlap"] == 1.0
        assert _positive(bf16["scale"])
        assert 0 < bf16["rel_max_diff"] < 0.1, (name, bf16)  # bf16: 8 mantissa bits
        assert 0 < bf16["rel_rms_diff"] < 0.05, (name, bf16)
        assert bf16["spearman_mean_act"] > 0.99 and bf16["top1pct_overlap"] >= 0.5


def test_speed_ratios_finite_positive(run):
    rows = run[0]["sections"]["speed"]["rows"]
    assert {(r["model"], r["dtype"]) for r in rows} == {
        (m, d) for m in ("bert-random", "llama-random") for d in ("float32", "bfloat16")
    }
    for r in rows:
        assert "error" not in r, r
        assert r["bridge_attn"] == "eager"
        timed = set(r["median_ms"])
        assert {"plain_eager", "plain_sdpa", "bridge", "capture", "pruned50"} <= timed, r
        # probe rows may fail in bf16 while the library's bf16 work lands: then recorded
        for k in ("predictivity", "attribution"):
            assert k in timed or r["failed"][k].startswith("failed: "), r
        if r["dtype"] == "float32":
            assert {"predictivity", "attribution"} <= timed, r["failed"]
        for base in ("over_eager", "over_sdpa"):
            assert set(r[base]) == timed
            assert all(_positive(v) for v in r[base].values()), r[base]
        assert r["over_eager"]["plain_eager"] == 1.0
        assert all(_positive(v) for v in r["median_ms"].values())


def test_skeleton_grid(run):
    sk = run[0]["sections"]["skeleton"]
    rows = [r for r in sk["rows"] if "error" not in r]
    assert len(rows) == len(sk["rows"]) == 2 * 3  # lengths 16, 32 x keep 1 / 0.5 / 0.25
    assert {r["keep"] for r in rows} == {1.0, 0.5, 0.25}
    for r in rows:
        assert _positive(r["ms"]) and _positive(r["speedup"]) and r["flop_ceiling"] >= 1
        assert abs(r["kept_ratio"] - r["keep"]) < 0.02
        if r["keep"] == 1.0:
            assert r["speedup"] == 1.0


def test_gloo_two_processes_match_one(run):
    d = run[0]["sections"]["dist"]
    assert d["backend"] == "gloo" and d["attempts"][0]["ok"], d
    assert d["pred_equal"] and d["pred_n_differ"] == 0
    assert d["att_max_rel_diff"] < 1e-5
    assert d["n_dev_2proc"] == 23  # word_task(40): 40 // 2 + 3 dev examples, all of them
    assert _positive(d["probe_s_1proc"]) and _positive(d["probe_s_2proc"])
