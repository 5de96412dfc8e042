"""The pictures a reader wants first, drawn from trained runs into ``docs/figures/`` (small PNGs),
with ``docs/gallery.md`` listing them and the runs they came from.

    python -m experiments.figures [--runs runs/compare/<stamp>] [--work runs/figures] [--out docs/figures] \\
        [-- training overrides]
    make figures [RUNS=runs/compare/<stamp>] [ARGS="..."]

The runs: with ``--runs``, a ``make compare`` folder's seed-1 runs (``<runs>/<variant>-s1``, the
variants in :data:`FIGURE_RUNS`) and its ``auroc.png``; otherwise each experiment's default
configuration trained once into ``<work>/<experiment>/`` (``--run.wandb=false`` and the overrides
after ``--``; a finished run with the same arguments is reused, an interrupted one resumed).

Every figure is a function of the runs alone (fixed images, fixed attack seed, no timestamps), so
drawing again from the same runs, with the same libraries, gives the same bytes. Optional figures
appear when their source exists: the compare AUROC figure, and the MetaBlock run's reliability
diagram (``test_reliability.png``) and subgroup results (``subgroups.csv``).
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from datamodules.checkpoint_data import build_datamodule  # noqa: E402
from experiments import prototypes  # noqa: E402
from experiments.compare import slug  # noqa: E402
from experiments.retrieve import retrieve  # noqa: E402
from experiments.runs import train_once  # noqa: E402
from lightning_modules.analysis.attention_figure import attention_figure, balanced_batch  # noqa: E402
from lightning_modules.callbacks.attention_maps import balanced_indices  # noqa: E402
from lightning_modules.modules.loading import load_module, read_checkpoint  # noqa: E402
from lightning_modules.protopnet.analysis import push_record  # noqa: E402
from lightning_modules.protopnet.gallery import prototype_gallery, push_folder  # noqa: E402
from lightning_modules.utils.atomic_io import atomic_write  # noqa: E402
from lightning_modules.utils.lesion_examples import lesion_examples  # noqa: E402
from lightning_modules.utils.plots import figure_to_array  # noqa: E402

#: The run each figure is drawn from: experiment config -> its ``make compare`` variant
#: (experiments/registry.yaml) whose seed-1 run stands for it.
FIGURE_RUNS: dict[str, str] = {
    "metablock": "MetaBlock",
    "attn_vgg": "AttnVGG",
    "soft_attention": "soft attention (concat)",  # soft_attention.yaml's own scoring
    "protopnet": "ProtoPNet",
    "abe": "ABE-M (k-NN)",
}
#: Widest picture written (GitHub shows about 880 px of a page's width).
MAX_WIDTH = 900
#: What a committed figure should stay under (a warning names any larger one).
MAX_BYTES = 300_000


#: Figures drawn only when their source exists; one an earlier call drew is removed when it is gone.
OPTIONAL = ("compare_auroc.png", "reliability.png", "subgroups.png")


@dataclass(frozen=True)
class Figure:
    """One picture of the gallery: its file name, title, caption, and the runs it was drawn from."""

    name: str
    title: str
    caption: str
    sources: tuple[str, ...]
    notebook: str = ""  # the notebook that draws the same picture with the same function


# -- the runs -------------------------------------------------------------------------------------
def compare_runs(compare_dir: Path, seed: int = 1) -> dict[str, Path]:
    """The finished seed-``seed`` run of every :data:`FIGURE_RUNS` variant in a compare folder."""
    runs = {exp: compare_dir / f"{slug(variant)}-s{seed}" for exp, variant in FIGURE_RUNS.items()}
    missing = [str(d) for d in runs.values() if not (d / "metrics.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{compare_dir} is not a finished make compare folder with seed {seed}: no "
                                f"metrics.json in {', '.join(missing)} (finish it with make compare "
                                f"COMPARE_DIR={compare_dir})")
    return runs


def trained_runs(work: Path, overrides: Sequence[str]) -> dict[str, Path]:
    """Each :data:`FIGURE_RUNS` experiment trained (once) in ``work/<experiment>``."""
    runs = {}
    for exp in FIGURE_RUNS:
        run_dir = work / exp
        print(f"figures: the {exp} run in {run_dir}", flush=True)
        train_once(run_dir, ["--config", f"experiments/{exp}.yaml", "--run.wandb=false", *overrides])
        runs[exp] = run_dir
    return runs


def best_checkpoint(run_dir: Path) -> Path:
    found = sorted(run_dir.glob("checkpoints/best-*.ckpt"))
    if not found:
        raise FileNotFoundError(f"{run_dir}: no checkpoints/best-*.ckpt")
    return found[-1]


# -- writing --------------------------------------------------------------------------------------
def publish(picture: np.ndarray, path: Path, max_width: int = MAX_WIDTH) -> Path:
    """``picture`` (RGB uint8) as a small PNG: at most ``max_width`` wide (Lanczos), 256 colours
    (median cut, no dithering: the same pixels give the same bytes), written atomically."""
    image = Image.fromarray(np.ascontiguousarray(picture[..., :3])).convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS)
    image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    atomic_write(path, lambda f: image.save(f, format="PNG", optimize=True), mode="wb")
    if path.stat().st_size > MAX_BYTES:
        print(f"figures: {path} is {path.stat().st_size / 1e3:.0f} kB (aim < {MAX_BYTES / 1e3:.0f} kB)")
    return path


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def stack(pictures: Sequence[np.ndarray]) -> np.ndarray:
    """Pictures one above the other on white, left-aligned."""
    width = max(p.shape[1] for p in pictures)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255)
                           for p in pictures])  # fmt: skip


# -- figures that only this command draws -----------------------------------------------------------
def subgroup_chart(path: Path, cell_height: float = 0.32):
    """AUROC and balanced accuracy with their intervals per subgroup of a ``subgroups.csv``
    (``lightning_modules.evaluation.subgroups.write_subgroups``); unscored groups are left out."""
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("auroc") or r.get("bacc")]
    if not rows:
        raise ValueError(f"{path}: no scored subgroup")
    labels = [f"{r['field']} = {r['value']}  (n={r['images']})" for r in rows]
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 0.9 + cell_height * len(rows)), sharey=True)
    for ax, metric, title in zip(axes, ("auroc", "bacc"), ("macro AUROC", "balanced accuracy")):
        for yi, row in zip(y, rows):
            if not row.get(metric):
                continue
            value = float(row[metric])
            low, high = (float(row[f"{metric}_ci_{end}"]) if row.get(f"{metric}_ci_{end}") else value
                         for end in ("low", "high"))
            ax.errorbar(value, yi, xerr=[[value - low], [high - value]], fmt="o", color="C0", markersize=4, capsize=2)
        ax.set_title(f"{title} (95 % interval)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    fig.tight_layout()
    return fig


# -- the gallery ------------------------------------------------------------------------------------
def confident_test_image(module, datamodule, first: int = 32):
    """Among the first ``first`` test images, the correctly classified one with the highest
    probability (a clear case to explain); the first image if none is correct."""
    records = datamodule.records("test")
    indices = list(range(min(first, len(records))))
    batch = datamodule.eval_batch("test", indices)
    with torch.no_grad():
        probs = module.eval().class_probabilities(batch["image"], batch["meta"])
    confidence, predicted = probs.max(dim=1)
    correct = predicted == batch["label"]
    if not correct.any():
        return records[0]
    return records[int(torch.where(correct, confidence, torch.full_like(confidence, -1)).argmax())]


class Gallery:
    """Writes each picture into ``out`` as it is drawn and keeps the list for ``docs/gallery.md``."""

    def __init__(self, out: Path):
        self.out = out
        self.figures: list[Figure] = []

    def add(self, name: str, title: str, caption: str, sources: Sequence[Path], picture: np.ndarray,
            notebook: str = "") -> None:
        publish(picture, self.out / name)
        self.figures.append(Figure(name, title, caption, tuple(str(s) for s in sources), notebook))
        print(f"figures: {self.out / name}", flush=True)


def draw_data(gallery: Gallery, run: Path) -> None:
    checkpoint = read_checkpoint(best_checkpoint(run))
    data = build_datamodule(checkpoint, None, None, "test", num_workers=0)
    gallery.add("synthetic_lesions.png", "The synthetic lesions",
                "Four images per class with the lesion mask outline (cyan). ACK and SCC are drawn by the same "
                "rules; only the patient metadata tells them apart.",
                [run], figure_to_array(lesion_examples(data.table.records, data.class_names)),
                notebook="synthetic_lesions.ipynb")
    gallery.add("metablock_confusion_matrix.png", "MetaBlock: test confusion matrix",
                "MetaBlock's test confusion matrix (colour: recall per true class; text: counts).",
                [run], read_png(run / "test_confusion_matrix.png"))


def draw_attention(gallery: Gallery, run: Path, name: str, title: str) -> None:
    ckpt = best_checkpoint(run)
    module = load_module(ckpt)
    datamodule = build_datamodule(read_checkpoint(ckpt), None, None, "test", num_workers=0)
    hp = datamodule.hparams
    fig = attention_figure(module, balanced_batch(datamodule, "test"), module.class_names, hp.normalize_mean,
                           hp.normalize_std)  # fmt: skip
    gallery.add(name, f"{title}: attention and Grad-CAM",
                f"{title}: its attention maps and Grad-CAM of the predicted class (on the grid of its finest "
                "attention map), one test image per class; white: the lesion outline; row: true -> predicted "
                "class (probability).", [run], figure_to_array(fig), notebook="attention_maps.ipynb")


def draw_protopnet(gallery: Gallery, run: Path, tmp: Path) -> None:
    ckpt = str(best_checkpoint(run))
    checkpoint, module, datamodule = prototypes.load(ckpt)
    image = str(confident_test_image(module, datamodule).image_path)
    rows = prototypes.explain(ckpt, image, top_k=3, out=str(tmp / "explain.png"))
    gallery.add("protopnet_explanation.png", "ProtoPNet: this looks like that",
                "The three prototypes a test image activates most: where each fires on the image (cyan box), the "
                "prototype's patch and its source training image (yellow: receptive field); similarity x "
                "last-layer weight = its contribution to the predicted class.", [run], read_png(tmp / "explain.png"),
                notebook="prototypes.ipynb")
    folder = push_folder(run, push_record(checkpoint))
    gallery.add("protopnet_prototypes.png", "ProtoPNet: the prototypes",
                f"The two prototypes per class closest to their source patch, from the push after {folder.name} "
                "(the one the tested checkpoint holds).", [run], figure_to_array(prototype_gallery(folder)),
                notebook="prototypes.ipynb")
    size = datamodule.hparams.image_size
    top = rows[0]["prototype"]
    result = prototypes.attack(ckpt, image, prototype=top, region=(0, size // 3, 0, size // 3),
                               out=str(tmp / "attack.png"))  # fmt: skip
    gallery.add("protopnet_attack.png", "ProtoPNet: this does not look like that",
                f"The paper's attack on the same image: 40 steps within 8/255 per pixel, confined to the top-left "
                f"box, make its top prototype p{top} fire on skin (similarity {result.similarity_before:.2f} -> "
                f"{result.similarity_after:.2f}).", [run], read_png(tmp / "attack.png"), notebook="prototypes.ipynb")


def draw_retrieval(gallery: Gallery, run: Path, tmp: Path, queries: int = 3) -> None:
    ckpt = str(best_checkpoint(run))
    test = build_datamodule(read_checkpoint(ckpt), None, None, "test", num_workers=0).records("test")
    chosen = [test[i] for i in balanced_indices([r.label for r in test], 1)][:queries]
    pictures = []
    for k, query in enumerate(chosen):
        retrieve(ckpt, str(query.image_path), k=5, out=str(tmp / f"retrieval{k}.png"))
        pictures.append(read_png(tmp / f"retrieval{k}.png"))
    gallery.add("abe_retrieval.png", "ABE-M: retrieval",
                f"For {len(chosen)} test images (one per class), the five nearest training images by the ensemble "
                "embedding (class and distance above each).", [run], stack(pictures))


def draw_optional(gallery: Gallery, metablock: Path, compare_dir: Optional[Path]) -> None:
    if compare_dir is not None and (compare_dir / "auroc.png").is_file():
        gallery.add("compare_auroc.png", "Every architecture: test AUROC",
                    "`make compare`: test macro AUROC of every architecture, the seed-averaged score with its "
                    "95 % patient-bootstrap interval.",
                    [compare_dir], read_png(compare_dir / "auroc.png"))
    if (metablock / "test_reliability.png").is_file():
        gallery.add("reliability.png", "MetaBlock: reliability diagram", "MetaBlock's reliability diagram on the "
                    "test split.", [metablock], read_png(metablock / "test_reliability.png"))
    if (metablock / "subgroups.csv").is_file():
        try:
            chart = subgroup_chart(metablock / "subgroups.csv")
        except ValueError as err:  # every run writes the file; a small test split may score no group
            print(f"figures: no subgroup chart: {err}", flush=True)
            return
        gallery.add("subgroups.png", "MetaBlock: subgroups", "Test AUROC and balanced accuracy per subgroup, with "
                    "their intervals (groups too small to score are left out).", [metablock], figure_to_array(chart))


def draw(runs: dict[str, Path], out: Path, compare_dir: Optional[Path] = None) -> list[Figure]:
    """Every figure, written into ``out``; the list of what was written."""
    gallery = Gallery(out)
    draw_data(gallery, runs["metablock"])
    draw_attention(gallery, runs["attn_vgg"], "attention_attn_vgg.png", "AttnVGG")
    draw_attention(gallery, runs["soft_attention"], "attention_soft_attention.png", "Soft attention")
    with tempfile.TemporaryDirectory(prefix="dermattn-figures-") as tmp:
        draw_protopnet(gallery, runs["protopnet"], Path(tmp))
        draw_retrieval(gallery, runs["abe"], Path(tmp))
    draw_optional(gallery, runs["metablock"], compare_dir)
    return gallery.figures


def remove_stale(out: Path, written: Sequence[Figure]) -> None:
    """Optional figures an earlier call drew and this one did not (their source is gone) are
    removed, so the folder holds what the gallery lists."""
    keep = {f.name for f in written}
    for name in OPTIONAL:
        if name not in keep:
            (out / name).unlink(missing_ok=True)


def commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def gallery_markdown(figures: Sequence[Figure], out: Path, gallery: Path, command: str, drawn_at: str) -> str:
    folder = Path(os.path.relpath(out, gallery.parent)).as_posix()
    lines = ["# Gallery", "",
             f"Every picture below was drawn by `{command}` at commit `{drawn_at}` from the runs named under it",
             "(the synthetic data, each experiment's default configuration unless the runs say otherwise). This page",
             f"and `{folder}/` are written by that command: regenerate them rather than editing them.", ""]
    for figure in figures:
        notebook = f" `notebooks/{figure.notebook}` draws it too." if figure.notebook else ""
        lines += [f"## {figure.title}", "", f"![{figure.title}]({folder}/{figure.name})", "", figure.caption, "",
                  "From " + ", ".join(f"`{s}`" for s in figure.sources) + "." + notebook, ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, help="a make compare folder: draw from its seed-1 runs and auroc.png")
    parser.add_argument("--seed", type=int, default=1, help="with --runs: whose runs (default 1)")
    parser.add_argument("--work", type=Path, default=Path("runs/figures"),
                        help="without --runs: where the runs are trained")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--gallery", type=Path, default=Path("docs/gallery.md"))
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="after --: training overrides (without --runs)")
    args = parser.parse_args(argv)
    overrides = [a for a in args.overrides if a != "--"]
    if args.runs is not None and overrides:
        parser.error("training overrides apply to the runs this command trains, not to those of --runs")
    drawn_at = commit()  # before the pictures it writes make a clean checkout look "dirty"
    runs = compare_runs(args.runs, args.seed) if args.runs is not None else trained_runs(args.work, overrides)
    figures = draw(runs, args.out, args.runs)
    remove_stale(args.out, figures)
    # The gallery names the command that drew it: make's when it was make's plain call.
    given = list(sys.argv[1:] if argv is None else argv)
    plain = ["--runs", str(args.runs)] if args.runs is not None else []
    command = ("make figures" + (f" RUNS={args.runs}" if args.runs is not None else "") if given == plain
               else shlex.join(["python", "-m", "experiments.figures", *given]))
    page = gallery_markdown(figures, args.out, args.gallery, command, drawn_at)
    atomic_write(args.gallery, lambda f: f.write(page))
    print(f"figures: {len(figures)} pictures in {args.out}, listed in {args.gallery}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
