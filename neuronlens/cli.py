"""The ``neuronlens`` command line: ``neuronlens demo``, ``neuronlens study CONFIG`` and
``neuronlens tables RUN``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from neuronlens.errors import NeuronLensError
from neuronlens.study import (
    DEMO,
    MultiTaskConfig,
    load_config,
    multitask_markdown,
    read_summary,
    run_multitask_study,
    run_study,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="neuronlens",
        description="Neuron-level interpretability of transformer FFNs: whole studies from the command line.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the offline demo (MiniLM, built-in toy task) end to end",
        description="Prompt tuning, skill-neuron predictivity, suppression and pruning of "
        "all-MiniLM-L6-v2 on the built-in toy sentiment task, offline, in a few minutes; "
        "writes report.html and the saved artifacts to the output folder.",
    )
    demo.add_argument(
        "--out", default="neuronlens-out/demo", help="output folder (default: %(default)s)"
    )
    demo.add_argument(
        "--model", default="minilm", help="model to run the demo on (default: %(default)s)"
    )
    demo.add_argument("--fresh", action="store_true", help="recompute every step (no resume)")
    study = sub.add_parser(
        "study",
        help="run a study from a TOML config (resumable)",
        description="Run a whole study (prompts, predictivity, suppression, pruning, report) "
        "for the model and task of a TOML config; finished steps are loaded, not recomputed. "
        "See neuronlens.study for the fields.",
    )
    study.add_argument("config", help="TOML config file")
    study.add_argument(
        "--out", default=None, help="output folder (default: neuronlens-out/<config name>)"
    )
    study.add_argument("--fresh", action="store_true", help="recompute every step (no resume)")
    study.add_argument(
        "--plotly-js",
        choices=["inline", "cdn"],
        default="inline",
        help="inline: the report carries Plotly's JavaScript (4.7 MB, opens offline); "
        "cdn: a small report that loads it from Plotly's CDN when opened",
    )
    tables = sub.add_parser(
        "tables",
        help="print a multi-task study's tables in Markdown",
        description="Print the tables of a finished multi-task study (accuracy beside the "
        "paper's Table 1, predictivity and rho, transferability, specificity, suppression, "
        "cross suppression, steps) from its summary.json, as the study writes to tables.md.",
    )
    tables.add_argument("run", help="the study's output folder, or its summary.json")
    study.add_argument(
        "--images",
        choices=["png", "svg"],
        default=None,
        help="also write every figure as a still image in <out>/figures/ "
        "(needs kaleido and Chrome or Chromium: pip install 'neuronlens[images]')",
    )
    args = parser.parse_args(argv)

    try:
        if args.command == "tables":
            print(multitask_markdown(read_summary(args.run)), end="")
        elif args.command == "demo":
            run_study(replace(DEMO, model=args.model), args.out, resume=not args.fresh)
        else:
            cfg = load_config(args.config)  # a multi-task study when it lists tasks
            out = args.out or str(Path("neuronlens-out") / Path(args.config).stem)
            run = run_multitask_study if isinstance(cfg, MultiTaskConfig) else run_study
            run(cfg, out, resume=not args.fresh, plotly_js=args.plotly_js, images=args.images)
    except NeuronLensError as err:
        print(f"neuronlens: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
