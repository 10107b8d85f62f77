"""Run a study in a child process that is killed (``os._exit``, as SIGKILL: no clean-up, no
``finally``) or paused at its N-th atomic file replacement; used by test_study_faults.

    python -m tests.study_child CONFIG.json OUT [--kill-at N | --pause-at N --gate DIR]

``--kill-at N``: exit at once, inside the N-th ``os.replace`` (before it renames, so the
temporary file is left behind); ``--pause-at N``: at that point write ``DIR/paused`` and wait
until ``DIR/go`` exists, then go on. Prints the number of replacements at a normal exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from neuronlens.study import MultiTaskConfig, StudyConfig, run_multitask_study, run_study


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("--kill-at", type=int)
    ap.add_argument("--pause-at", type=int)
    ap.add_argument("--gate")
    args = ap.parse_args()
    raw = json.loads(Path(args.config).read_text())
    real, calls = os.replace, [0]

    def replace(src, dst, *a, **k):
        calls[0] += 1
        if calls[0] == args.kill_at:
            os._exit(137)
        if calls[0] == args.pause_at:
            gate = Path(args.gate)
            (gate / "paused").write_text(str(os.getpid()))
            while not (gate / "go").exists():
                time.sleep(0.01)
        return real(src, dst, *a, **k)

    os.replace = replace
    if "tasks" in raw:
        run_multitask_study(MultiTaskConfig.from_dict(raw), args.out, plotly_js="cdn")
    else:
        run_study(StudyConfig.from_dict(raw), args.out, plotly_js="cdn")
    print(f"replacements: {calls[0]}", file=sys.stderr)


if __name__ == "__main__":
    main()
