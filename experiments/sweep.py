"""Run one experiment over values of one config key (or named sets of overrides) and several
seeds; tabulate test metrics.

    python -m experiments.sweep --config experiments/metablock.yaml \
        --key model.init_args.fusion --values none concat metablock --seeds 1 2 3
    python -m experiments.sweep --config experiments/abe.yaml --metrics recall@1 auroc \
        --variants "mheads=--model.init_args.ensemble=heads --model.init_args.lambda_div=0" \
                   "abe-nodiv=--model.init_args.lambda_div=0" "abe=--model.init_args.lambda_div=1"

Every run is a normal training run (its own folder under ``runs/<name>-sweep/``); the summary
(mean and standard deviation over seeds) is printed as a Markdown table and written to
``runs/<name>-sweep/summary.md`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from experiments.runs import mean_std, train_once
from lightning_modules.utils.atomic_io import atomic_write, write_json

METRICS = ("auroc", "bacc", "acc")


def run_one(config: str, overrides: list[str], value: str, seed: int, name: str, extra: list[str]) -> dict:
    run_dir = Path("runs") / f"{name}-sweep" / f"{value}-s{seed}"
    return train_once(run_dir, ["--config", config, *overrides, f"--seed_everything={seed}", *extra])


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--key", help="config key to vary, e.g. model.init_args.fusion")
    parser.add_argument("--values", nargs="+", default=[])
    parser.add_argument("--variants", nargs="+", default=[], help='named override sets: "name=--a=1 --b=2"')
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), help="test metrics to tabulate")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="further --key=value overrides for every run")
    args = parser.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    name = yaml.safe_load(Path(args.config).read_text()).get("run", {}).get("name", Path(args.config).stem)
    variants = {v: [f"--{args.key}={v}"] for v in args.values} if args.key else {}
    for item in args.variants:
        label, _, overrides = item.partition("=")
        variants[label] = overrides.split()
    if not variants:
        parser.error("give --key with --values, or --variants")
    results = {v: [run_one(args.config, o, v, s, name, args.extra) for s in args.seeds] for v, o in variants.items()}

    header = args.key.split(".")[-1] if args.key else "variant"
    lines = [f"| {header} | " + " | ".join(f"test {m}" for m in args.metrics) + " | parameters |",
             "|---" * (len(args.metrics) + 2) + "|"]
    summary = {}
    for value, runs in results.items():
        cells, summary[value] = [], {}
        for metric in args.metrics:
            summary[value][metric] = mean_std([r["test"][metric] for r in runs])
            cells.append(f"{summary[value][metric]['mean']:.3f} ± {summary[value][metric]['std']:.3f}")
        params = next((r["parameters"] for r in runs if r.get("parameters")), None)
        lines.append(f"| {value} | " + " | ".join(cells) + (f" | {params / 1e6:.2f} M |" if params else " | - |"))
    table = "\n".join(lines)
    footer = f"\n\nmean ± sample std over seeds {args.seeds}; `python -m experiments.sweep {' '.join(argv or sys.argv[1:])}`\n"
    out = Path("runs") / f"{name}-sweep"
    atomic_write(out / "summary.md", lambda f: f.write(table + footer))
    write_json(out / "summary.json", {"variants": variants, "seeds": args.seeds, "results": summary})
    print(table + footer)
    return table


if __name__ == "__main__":
    from datamodules.entry_point import run

    run(main)
