"""The cost model's fit and predictions (benchmarks/cost_model.py) and a quick scale run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import cost_model as cmod  # noqa: E402

PLANTED = {  # seconds per unit of each flop-model term, and bytes per memory term
    "flops": [2e-10, 3e-10, 5e-11, 0.02],
    "gemm": [1.0, 1.0, 1e-9, 5e-11, 0.02],
    "memory": [3.0, 10.0, 2.0, 5e6],
}


class AnalyticGemm(cmod.GemmTable):
    """GEMM seconds per row from FLOPs (no timing): x @ W.T at 10 GFLOP/s, g @ W at 0.5."""

    def row(self, k_in, n_out, form):
        return 2 * k_in * n_out / (1e10 if form == "fwd" else 5e8)


def synthetic_results(gemm, noise=0.0, seed=0):
    """Measurement records of the full grid, timed and sized by the planted coefficients."""
    rng = np.random.default_rng(seed)
    out = []
    for cfg in cmod._grid(quick=False):
        rec = {
            "config": {"shape": vars(cfg.shape).copy(), "batch": cfg.batch, "seq": cfg.seq},
            "median_s": {},
            "mem_delta_bytes": {},
            "rss_loaded_bytes": 600 * 2**20 + 2 * cfg.shape.param_count() * 2,
            "weights_bytes": cfg.shape.param_count() * 2,
        }
        for m in cmod.METHODS:
            x = cmod.time_features(cfg.shape, cfg.batch, cfg.seq, m, "flops", gemm)
            u = cmod.unembedding_seconds(cfg.shape, cfg.batch, cfg.seq, m, gemm)
            t = float(np.dot(x, PLANTED["flops"])) + u
            rec["median_s"][m] = t * (1 + noise * rng.standard_normal())
            xm = cmod.mem_features(cfg.shape, cfg.batch, cfg.seq, m, 2)
            lb = cmod.logits_bytes(cfg.shape, cfg.batch, cfg.seq, m, 2)
            rec["mem_delta_bytes"][m] = float(np.dot(xm, PLANTED["memory"])) + lb
        out.append(rec)
    return out


def test_nnls_recovers_planted_coefficients():
    rng = np.random.default_rng(1)
    X = rng.uniform(1, 100, (20, 4)) * np.array([1e9, 1e8, 1e7, 1])
    coef = np.array([2e-10, 3e-9, 4e-8, 0.05])
    np.testing.assert_allclose(cmod.nnls_fit(X, X @ coef), coef, rtol=1e-6)
    np.testing.assert_allclose(cmod.nnls_fit(X, X @ coef, relative=False), coef, rtol=1e-6)
    noisy = X @ coef * (1 + 0.01 * rng.standard_normal(20))
    np.testing.assert_allclose(cmod.nnls_fit(X, noisy), coef, rtol=0.15)


def test_fit_all_recovers_planted_timings_and_memory():
    gemm = AnalyticGemm(torch.bfloat16)
    fits = cmod.fit_all(synthetic_results(gemm), gemm, torch.bfloat16)
    for m in cmod.METHODS:
        np.testing.assert_allclose(fits[m]["flops"]["coef"], PLANTED["flops"], rtol=1e-4)
        np.testing.assert_allclose(fits[m]["memory"]["coef"], PLANTED["memory"], rtol=1e-3)
        assert fits[m]["flops"]["max_rel_err"] < 1e-4
    assert fits["rss_baseline_bytes"] == 600 * 2**20


def test_predicted_table_has_every_target():
    gemm = AnalyticGemm(torch.bfloat16)
    fits = cmod.fit_all(synthetic_results(gemm, noise=0.05), gemm, torch.bfloat16)
    pred = cmod.predictions(fits, gemm, torch.bfloat16, metas={})
    assert set(pred) == {"Llama-3.2-1B", "Llama-2-7B", "Llama-2-70B"}
    for name, row in pred.items():
        for m in cmod.METHODS:
            p = row["methods"][m]
            for key in ("s_per_1000_flops", "s_per_1000_gemm"):
                assert p[key] is not None and math.isfinite(p[key]) and p[key] > 0, (name, m, key)
            mem = p["memory"]
            assert mem["peak"] > mem["weights"] == cmod.TARGETS[name].param_count() * 2
            assert all(math.isfinite(v) and v >= 0 for v in mem.values())
        for s in ("512", "2048"):
            a = row["attention_memory"][s]
            assert a["per_layer_bytes"] == cmod.TARGETS[name].heads * int(s) ** 2 * 2
    for m in cmod.METHODS:  # bigger models cost more
        t = [pred[n]["methods"][m]["s_per_1000_gemm"] for n in cmod.TARGETS]
        assert t == sorted(t), (m, t)
    summary = {"dtype": "bfloat16", "threads": 2, "fits": fits, "predictions": pred}
    md = cmod.markdown(summary | {"measured": synthetic_results(gemm)[:2]})
    assert "Llama-2-70B" in md and "attribution" in md


@pytest.mark.parametrize(
    ("name", "expected"), [("Llama-2-7B", 6_738_415_616), ("Llama-3.2-1B", 1_235_814_400)]
)
def test_meta_param_counts_match_the_analytic_count(name, expected):
    shape = cmod.TARGETS[name]
    assert shape.param_count() == expected
    info = cmod.meta_info(shape)
    assert info["meta_params"] == info["analytic_params"] == expected
    assert info["device"] == "meta" and info["dtype"] == "bfloat16"
    assert info["sites"] == shape.layers and info["ffn_widths"] == [shape.d_ffn]
    assert info["n_neurons"] == shape.layers * shape.d_ffn and info["vocab"] == shape.vocab


def test_70b_analytic_count():
    assert round(cmod.TARGETS["Llama-2-70B"].param_count() / 1e9, 2) == 68.98


def test_scale_runs_quick_writes_its_json(tmp_path):
    gemm = AnalyticGemm(torch.bfloat16)
    fits = cmod.fit_all(synthetic_results(gemm), gemm, torch.bfloat16)
    cm_path = tmp_path / "cost_model.json"
    cm_path.write_text(json.dumps({"fits": fits, "dtype": "bfloat16", "quick": False}))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "scale_runs.py"), "--quick", "--out", str(out)]
        + ["--cost-model", str(cm_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "scale_runs.json").read_text())
    assert data["quick"] and set(data["runs"]) == {"a", "b"}
    for run in data["runs"].values():
        steps = run["steps"]
        for step in ("load", "capture", "predictivity", "attribution", "suppression", "prune"):
            assert "seconds" in steps[step], (step, steps[step])
            assert steps[step]["peak_rss_bytes"] > 0
        for step in ("capture", "predictivity", "attribution", "suppression"):
            assert steps[step]["measured_over_predicted_gemm"] > 0
        assert steps["speed"]["speedup"] > 0 and "predicted_speedup" in steps["speed"]
    assert "seconds_per_layer" in data["runs"]["b"]["steps"]["attribution"]
    assert (out / "scale_runs.md").is_file()
