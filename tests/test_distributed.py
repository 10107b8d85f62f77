"""Probes under torchrun: 2 CPU processes (gloo) give exactly the single-process scores."""

import socket
import subprocess
import sys
from pathlib import Path

import torch

from neuronlens.probes import NeuronScores, attribute, predictivity

from .probe_fixtures import fake_prompt, tiny, word_task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    worker = Path(__file__).with_name("dist_worker.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(worker),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    done = all((tmp_path / f"done-{r}").exists() for r in (0, 1))
    # a gloo abort in process teardown, after both ranks finished, is not a probe failure
    teardown_abort = done and "terminate called without an active exception" in proc.stderr
    assert proc.returncode == 0 or teardown_abort, proc.stderr[-3000:]

    model, task = tiny(), word_task()
    prompts = [fake_prompt(model, task, seed=s) for s in (0, 1)]
    pred = predictivity(
        model, prompts, task, task.load("dev"), train=task.load("train"), progress=False
    )
    att = attribute(model, prompts[0], task, task.load("train"), n=None, progress=False)
    pred2 = NeuronScores.load(tmp_path / "pred", model)
    att2 = NeuronScores.load(tmp_path / "att", model)
    assert torch.equal(pred.flat(), pred2.flat())  # counts: exactly equal
    torch.testing.assert_close(
        att.flat(), att2.flat(), rtol=1e-6, atol=0
    )  # float sums, other order
    assert pred2.meta["n_dev"] == len(task.load("dev"))
