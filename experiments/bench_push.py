"""Benchmark of the ProtoPNet push: the whole push in images/s, and its search against the
reference code's per-prototype loop, at 6 x 10 and 200 x 10 prototypes.

    python -m experiments.bench_push [--images 512] [--image-size 96] [--backbone resnet10t]

Both searches consume the same tensors: the network's forward (backbone, add-on layers and the
prototype distances) runs once per batch and is shared, so it is timed separately and the
"search" is what each approach does with the distances: ``PushSearch.update`` (all prototypes at
once, on the tensors' device) versus ``brute_force_search`` (per batch, per prototype, numpy
argmin, as the reference implementation). Reported as rates and the search speed-up ``NNx``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from lightning_modules.protopnet.push import PushSearch, brute_force_search  # noqa: E402
from lightning_modules.nets.protopnet import ProtoPNet  # noqa: E402


def synthetic_batches(images: int, batch_size: int, image_size: int, num_classes: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, images, batch_size):
        n = min(batch_size, images - start)
        yield (torch.rand(n, 3, image_size, image_size, generator=generator),
               torch.arange(start, start + n) % num_classes, torch.arange(start, start + n))  # fmt: skip


def measure(num_classes: int, args) -> dict:
    torch.manual_seed(0)
    net = ProtoPNet(num_classes, backbone=args.backbone, prototypes_per_class=10, prototype_dim=128).eval()
    device = torch.device(args.device)
    net.to(device)
    batches = list(synthetic_batches(args.images, args.batch_size, args.image_size, num_classes))
    with torch.no_grad():
        net(batches[0][0].to(device))  # warm-up
        start = time.perf_counter()
        outputs = []
        for image, labels, index in batches:
            out = net(image.to(device))
            outputs.append((out.distances, out.features, labels.to(device), index.to(device)))
        if device.type == "cuda":
            torch.cuda.synchronize()
        forward = time.perf_counter() - start

    def vectorised() -> float:
        search = PushSearch.for_net(net).to(device)
        t = time.perf_counter()
        for d, z, y, i in outputs:
            search.update(d, z, y, i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def loop() -> float:
        t = time.perf_counter()
        brute_force_search(outputs, net.prototype_class_identity)
        return time.perf_counter() - t

    vec = min(vectorised() for _ in range(args.repeats))
    ref = min(loop() for _ in range(args.repeats))
    m = net.num_prototypes
    return {
        "prototypes": m,
        "images": args.images,
        "forward_s": round(forward, 3),
        "search_vectorised_s": round(vec, 4),
        "search_loop_s": round(ref, 4),
        "search_speedup": round(ref / vec, 1),
        "push_images_per_s_vectorised": round(args.images / (forward + vec), 1),
        "push_images_per_s_loop": round(args.images / (forward + ref), 1),
        "search_share_of_loop_push": round(ref / (forward + ref), 3),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    rows = [measure(k, args) for k in (6, 200)]
    print(f"\n== push bench: {args.backbone}, {args.images} images at {args.image_size}px, batch {args.batch_size}, "
          f"{args.device}, {torch.get_num_threads()} threads ==")
    for r in rows:
        print(f"{r['prototypes']:5d} prototypes: push {r['push_images_per_s_vectorised']:7.1f} images/s "
              f"(loop: {r['push_images_per_s_loop']:.1f}); search {r['search_vectorised_s'] * 1e3:8.1f} ms vs loop "
              f"{r['search_loop_s'] * 1e3:8.1f} ms -> {r['search_speedup']:.0f}x "
              f"(the loop's search is {100 * r['search_share_of_loop_push']:.0f} % of its push)")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
