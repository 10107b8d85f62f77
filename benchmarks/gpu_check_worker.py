"""Run by gpu_check.py under ``torchrun --nproc_per_node 2``: its dist section's probes.

    python -m torch.distributed.run --nproc_per_node 2 benchmarks/gpu_check_worker.py OUT \
        --backend nccl|gloo|cpu:gloo,cuda:nccl --size tiny|full

Each process joins with ``neuronlens.probes.init_distributed`` (nccl: on ``cuda:LOCAL_RANK``;
gloo: on the CPU), runs ``gpu_check.dist_workload`` on its shard, and rank 0 saves the
scores (``OUT/pred``, ``OUT/att``) and its probe time; each rank then writes ``OUT/done-R``.
A failure is written to ``OUT/error-R.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from neuronlens.probes import init_distributed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--size", default="tiny")
    args = ap.parse_args()
    out = Path(args.out)
    rank = int(os.environ.get("RANK", 0))
    try:
        from gpu_check import dist_workload

        local = int(os.environ.get("LOCAL_RANK", 0))
        on_gpu = "nccl" in args.backend
        if on_gpu:  # init_distributed sets the device only for plain "nccl"
            torch.cuda.set_device(local)
        rank, world = init_distributed(args.backend)
        if world != 2:
            raise RuntimeError(f"expected 2 processes, got {world}")
        device = f"cuda:{local}" if on_gpu else "cpu"
        pred, att, secs = dist_workload(args.size, device)
        if rank == 0:
            pred.save(out / "pred")
            att.save(out / "att")
            (out / "timing-0.json").write_text(json.dumps({"probe_s": secs, "device": device}))
        dist.barrier()
        (out / f"done-{rank}").write_text("ok")  # the work is over; only teardown is left
        dist.destroy_process_group()
    except BaseException:
        (out / f"error-{rank}.txt").write_text(traceback.format_exc())
        sys.stderr.write(traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    # skip the interpreter's teardown: gloo's threads have (rarely) aborted the process there
    os._exit(0)


if __name__ == "__main__":
    main()
