"""Run by tests/test_distributed.py under torchrun: probes on 2 CPU processes (gloo)."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.distributed as dist  # noqa: E402

from neuronlens.probes import attribute, init_distributed, predictivity  # noqa: E402
from tests.probe_fixtures import fake_prompt, tiny, word_task  # noqa: E402


def main(out: str) -> None:
    rank, world = init_distributed("gloo")
    assert world == 2
    model, task = tiny(), word_task()
    prompts = [fake_prompt(model, task, seed=s) for s in (0, 1)]
    pred = predictivity(
        model,
        prompts,
        task,
        task.load("dev"),
        train=task.load("train"),
        batch_size=5,
        progress=False,
    )
    att = attribute(
        model, prompts[0], task, task.load("train"), n=None, batch_size=4, progress=False
    )
    if rank == 0:
        pred.save(Path(out) / "pred")
        att.save(Path(out) / "att")
    dist.barrier()
    (Path(out) / f"done-{rank}").write_text("ok")  # the work is over; only teardown is left
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip the interpreter's teardown: gloo's threads have (rarely) aborted the process there
    # with "terminate called without an active exception" after all the work was done
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
