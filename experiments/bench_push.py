"""Benchmark of the ProtoPNet push as users run it: search, projection and the boxes of every
prototype (receptive field and high-activation box), against a bare forward pass over the same
images and against a loop doing the reference implementation's per-prototype work.

    python -m experiments.bench_push [--backbone resnet18] [--images 192] [--image-size 224] \
        [--classes 6 200] [--prototypes-per-class 10]

Three timings per prototype count, on the same network weights and images:

- **forward**: the bare network over every image (backbone, add-on layers, distances): what any
  push must at least cost;
- **push**: ours as ``PrototypePush`` runs it: ``search_nearest_patches`` (all prototypes at once,
  keeping each winner's latent map), projection, then ``describe_push`` (receptive-field boxes)
  and ``activation_boxes`` (each prototype's similarity map, from the kept latent map, upsampled
  and cut at its 95th percentile) - no second forward pass for the boxes. Picture rendering
  (with the full-size maps it keeps) is not included (``--pictures`` times it separately);
- **reference loop**: the same forward, then per batch and per prototype what the reference code
  does: the class mask, an argmin over the whole distance map of the eligible images and, for
  every improvement, the receptive-field box and the upsampled activation map with its
  percentile box (``reference_push_work``).

Printed: push images/s, push time over forward time (the boxes' and search's overhead; aim
<= 1.1x), ours against the reference loop (aim >= 1.5x), and the search and boxes alone (both
on the same precomputed forward outputs) against the loop's. Rates, never asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from types import SimpleNamespace
from typing import Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_modules.nets.protopnet import ProtoPNet  # noqa: E402
from lightning_modules.protopnet.pictures import activation_boxes, describe_push, prototype_pictures  # noqa: E402
from lightning_modules.protopnet.projection import search_nearest_patches  # noqa: E402
from lightning_modules.protopnet.push import PushResult, PushSearch, brute_force_search  # noqa: E402
from lightning_modules.protopnet.receptive_field import cell_box  # noqa: E402


def synthetic_batches(images: int, batch_size: int, image_size: int, num_classes: int, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, images, batch_size):
        n = min(batch_size, images - start)
        batches.append({"image": torch.rand(n, 3, image_size, image_size, generator=generator),
                        "label": torch.arange(start, start + n) % num_classes,
                        "index": torch.arange(start, start + n)})  # fmt: skip
    return batches


def high_activation_box(activation: np.ndarray, percentile: float = 95.0) -> tuple[int, int, int, int]:
    """The reference's ``find_high_activation_crop``: the bounding box of the pixels at or above
    the percentile, found by scanning rows and columns of the mask."""
    threshold = np.percentile(activation, percentile)
    mask = activation >= threshold
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@torch.no_grad()
def reference_push_work(net: ProtoPNet, batches: list[dict], outputs: list, image_size: int) -> PushResult:
    """The reference push's work after the forward (each batch's ``(distances, features)`` in
    ``outputs``): a Python loop over prototypes with a numpy argmin over the eligible images'
    whole distance maps (``brute_force_search``) and, on each improvement, the receptive-field
    box and the bicubically upsampled activation map (``cv2.resize``, as the reference) with its
    percentile box (kept per prototype, as the reference keeps them for its pictures)."""
    rf = net.receptive_field(image_size)
    boxes: dict[int, tuple] = {}

    def boxes_of(j: int, h: int, w: int, distance_map: np.ndarray) -> None:
        activation = np.log((distance_map + 1) / (distance_map + net.epsilon))
        upsampled = cv2.resize(activation, dsize=(image_size, image_size), interpolation=cv2.INTER_CUBIC)
        boxes[j] = (cell_box(rf, h, w), high_activation_box(upsampled))

    rows = [(d, z, batch["label"], batch["index"]) for batch, (d, z) in zip(batches, outputs)]
    return brute_force_search(rows, net.prototype_class_identity, on_improvement=boxes_of)


@torch.no_grad()
def our_push(net: ProtoPNet, batches: list[dict], device: torch.device, image_size: int, records, class_names,
             outputs: Optional[list] = None):
    """What ``ProtoPNetModule.push_prototypes`` + ``PrototypePush.push`` do before the last-layer
    fit and the pictures: search (keeping source maps), projection, receptive-field and
    activation boxes. With ``outputs`` (each batch's ``(distances, features)``) the forward is
    skipped, to time the rest alone."""
    if outputs is None:
        search = search_nearest_patches(net, batches, device, keep_source_maps=True)
    else:
        search = PushSearch.for_net(net, keep_source_maps=True).to(device)
        for batch, (distances, features) in zip(batches, outputs):
            search.update(distances, features, batch["label"].to(device), batch["index"].to(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prototypes without an eligible image: expected with few images
        search.project(net)
    activation = net.distance_to_similarity(search.activation_maps(net.prototype_vectors))
    described = describe_push(search.result(), net, records, class_names, image_size)
    activation_boxes(described, activation, (image_size, image_size), keep_maps=False)
    return search.result(), described, activation


def timed(fn, repeats: int):
    """(best wall time over ``repeats``, the last call's result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure(num_classes: int, args) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    net = ProtoPNet(num_classes, backbone=args.backbone, prototypes_per_class=args.prototypes_per_class,
                    prototype_dim=args.prototype_dim).eval().to(device)  # fmt: skip
    batches = synthetic_batches(args.images, args.batch_size, args.image_size, num_classes)
    records = [SimpleNamespace(image_id=f"img{i}", image_path=f"img{i}.png", original_path=f"img{i}.png", label=i % num_classes)
               for i in range(args.images)]  # fmt: skip
    class_names = [f"c{k}" for k in range(num_classes)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        net(batches[0]["image"].to(device))  # warm-up

        def forward():
            outs = [net(batch["image"].to(device)) for batch in batches]
            sync()
            return [(o.distances, o.features) for o in outs]

        forward_s, outputs = timed(forward, args.repeats)

    def ours(shared_outputs=None):
        copy_ = copy.deepcopy(net)  # the projection changes the prototypes: every repeat starts equal
        start = time.perf_counter()
        out = our_push(copy_, batches, device, args.image_size, records, class_names, shared_outputs)
        sync()
        return time.perf_counter() - start, out

    push_s, (result, described, activation) = min((ours() for _ in range(args.repeats)), key=lambda r: r[0])
    search_s = min(ours(outputs)[0] for _ in range(args.repeats))
    # The reference loop's search on the forward outputs computed above (its forward costs the
    # same as ours), so both sides share the forward time exactly.
    loop_search_s, reference = timed(
        lambda: reference_push_work(net, batches, outputs, args.image_size), max(1, args.repeats - 1))
    found = result.image_index >= 0
    same = bool(torch.equal(result.image_index.cpu(), reference.image_index) and
                torch.allclose(result.distance.cpu()[found], reference.distance[found], rtol=1e-4, atol=1e-4))
    row = {
        "prototypes": net.num_prototypes,
        "images": args.images,
        "forward_images_per_s": round(args.images / forward_s, 1),
        "push_images_per_s": round(args.images / push_s, 1),
        "push_over_forward": round(push_s / forward_s, 3),
        "reference_push_images_per_s": round(args.images / (forward_s + loop_search_s), 1),
        "push_speedup_over_reference": round((forward_s + loop_search_s) / push_s, 2),
        "search_and_boxes_s": round(search_s, 3),
        "reference_search_and_boxes_s": round(loop_search_s, 3),
        "search_speedup": round(loop_search_s / search_s, 1),
        "same_prototypes_as_reference": same,
    }
    if args.pictures:
        picture = np.zeros((args.image_size, args.image_size, 3), dtype=np.uint8)
        start = time.perf_counter()  # the upsampled maps are kept for pictures only: timed here
        maps = activation_boxes(described, activation, (args.image_size, args.image_size))
        for entry in described:
            if entry["prototype"] in maps:
                prototype_pictures(picture, maps[entry["prototype"]], entry["receptive_field_box"], entry["activation_box"])
        row["pictures_per_s"] = round(len(maps) / (time.perf_counter() - start), 1)
    return row


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, nargs="+", default=[6, 200],
                        help="prototype counts are classes x prototypes per class (6: the synthetic data; 200: CUB)")
    parser.add_argument("--prototypes-per-class", type=int, default=10)
    parser.add_argument("--prototype-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pictures", action=argparse.BooleanOptionalAction, default=False,
                        help="also time rendering the three pictures of every prototype (not part of the push)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    rows = [measure(k, args) for k in args.classes]
    print(f"\n== push bench: {args.backbone}, {args.images} images at {args.image_size}px, batch {args.batch_size}, "
          f"{args.device}, {torch.get_num_threads()} threads ==")
    for r in rows:
        print(f"{r['prototypes']:5d} prototypes: push with boxes {r['push_images_per_s']:6.1f} images/s, "
              f"{r['push_over_forward']:.2f}x a bare forward pass ({r['forward_images_per_s']:.1f} images/s; aim <= 1.1x); "
              f"reference loop {r['reference_push_images_per_s']:.1f} images/s -> ours "
              f"{r['push_speedup_over_reference']:.1f}x (aim >= 1.5x)")
        print(f"{'':18}search + boxes {r['search_and_boxes_s'] * 1e3:8.0f} ms vs the reference loop's "
              f"{r['reference_search_and_boxes_s'] * 1e3:8.0f} ms -> {r['search_speedup']:.0f}x; "
              f"same prototypes: {'yes' if r['same_prototypes_as_reference'] else 'NO'}"
              + (f"; pictures {r['pictures_per_s']:.0f}/s (not in the push)" if "pictures_per_s" in r else ""))
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
