"""Benchmark of the ProtoPNet push as users run it: search, projection and the boxes of every
prototype (receptive field and high-activation box), against a bare forward pass over the same
images and against a stand-in doing the reference implementation's work.

    python -m experiments.bench_push [--backbone resnet18] [--images 192] [--image-size 224] \
        [--classes 6 200] [--prototypes-per-class 10] [--device cpu|cuda]

Three timings per prototype count, on the same network weights and images:

- **forward**: the bare network over every image (backbone, add-on layers, distances): what any
  push must at least cost;
- **push**: ours as ``PrototypePush`` runs it: ``search_nearest_patches`` (all prototypes at once,
  keeping each winner's latent map), projection, then ``describe_push`` (receptive-field boxes)
  and ``activation_boxes`` of the module's default ``before`` maps (each prototype's similarity
  map before projection, from the kept latent map, upsampled and cut at its 95th percentile) -
  no second forward pass for the boxes. Picture rendering (with the full-size maps it keeps) is
  not included (``--pictures`` times it separately);
- **stand-in**: the same forward, then per batch exactly what the reference's
  ``update_prototypes_on_batch`` computes (``ReferencePush``): copies of the batch's outputs to
  numpy, a class index, and per prototype its class, a copy of the class's images' distance maps,
  their minimum and, for every improvement, the patch, the receptive-field box and the bicubically
  upsampled activation map (``cv2.resize``) with its 95th-percentile box.

Printed: push images/s, push time over forward time (aim <= 1.1x), ours against the stand-in's
whole push (aim >= 1.5x), and the part after the forward pass alone, ours against the stand-in's,
both on the same precomputed forward outputs: on a GPU, where the forward costs little, that part
is what differs. Rates, never asserted.
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
from lightning_modules.protopnet.push import PushResult, PushSearch  # noqa: E402


def synthetic_batches(images: int, batch_size: int, image_size: int, num_classes: int, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, images, batch_size):
        n = min(batch_size, images - start)
        batches.append({"image": torch.rand(n, 3, image_size, image_size, generator=generator),
                        "label": torch.arange(start, start + n) % num_classes,
                        "index": torch.arange(start, start + n)})  # fmt: skip
    return batches


def find_high_activation_crop(activation: np.ndarray, percentile: float = 95.0) -> tuple[int, int, int, int]:
    """The reference's box of the pixels at or above the percentile (``helpers.py``): a float mask,
    then Python scans for the first and last row and column holding one."""
    threshold = np.percentile(activation, percentile)
    mask = np.ones(activation.shape)
    mask[activation < threshold] = 0
    y0 = next(i for i in range(mask.shape[0]) if np.amax(mask[i]) > 0.5)
    y1 = next(i for i in reversed(range(mask.shape[0])) if np.amax(mask[i]) > 0.5)
    x0 = next(j for j in range(mask.shape[1]) if np.amax(mask[:, j]) > 0.5)
    x1 = next(j for j in reversed(range(mask.shape[1])) if np.amax(mask[:, j]) > 0.5)
    return y0, y1 + 1, x0, x1 + 1


def reference_rf_box(rf_info: list, image_size: int, h: int, w: int) -> list[int]:
    """The reference's ``compute_rf_protoL_at_spatial_location`` (``receptive_field.py``): the box
    of size ``r`` around the cell's centre ``start + index * jump``, clipped to the image."""
    n, jump, size, start = rf_info
    assert h < n and w < n
    centre_h, centre_w = start + h * jump, start + w * jump
    return [max(int(centre_h - size / 2), 0), min(int(centre_h + size / 2), image_size),
            max(int(centre_w - size / 2), 0), min(int(centre_w + size / 2), image_size)]  # fmt: skip


class ReferencePush:
    """A stand-in for the reference push (cfchen-duke/ProtoPNet ``push.py``,
    https://github.com/cfchen-duke/ProtoPNet/blob/81bf2b70cb60e4f36e25e8be386eb616b7459321/push.py):
    ``update_batch`` does what its ``update_prototypes_on_batch`` computes for every batch after
    ``push_forward`` (without writing files, which it does only when given a folder), ``finish``
    what ``push_prototypes`` does after the last batch."""

    def __init__(self, net: ProtoPNet, rf_info: list):
        """``rf_info``: ``[n, jump, size, start]`` of the prototype layer's cells, which the
        reference computes once, when it builds the network (``reference_rf_info``)."""
        self.net = net
        m, dim, ph, pw = net.prototype_shape
        self.global_min_proto_dist = np.full(m, np.inf)
        self.global_min_fmap_patches = np.zeros([m, dim, ph, pw])
        self.proto_rf_boxes = np.full([m, 6], -1)
        self.proto_bound_boxes = np.full([m, 6], -1)
        self.rf_info = rf_info
        self.cells = np.full((m, 2), -1)  # not kept by the reference: for comparing the results only
        self.start_index = 0

    def update_batch(self, search_batch_input: torch.Tensor, search_y: torch.Tensor, distances: torch.Tensor,
                     features: torch.Tensor) -> None:
        net = self.net
        protoL_input_ = np.copy(features.detach().cpu().numpy())
        proto_dist_ = np.copy(distances.detach().cpu().numpy())
        class_to_img_index_dict: dict[int, list[int]] = {key: [] for key in range(net.num_classes)}
        for img_index, img_y in enumerate(search_y):
            class_to_img_index_dict[img_y.item()].append(img_index)
        m, _, proto_h, proto_w = net.prototype_shape
        for j in range(m):
            target_class = torch.argmax(net.prototype_class_identity[j]).item()
            if len(class_to_img_index_dict[target_class]) == 0:
                continue
            proto_dist_j = proto_dist_[class_to_img_index_dict[target_class]][:, j, :, :]
            batch_min_proto_dist_j = np.amin(proto_dist_j)
            if batch_min_proto_dist_j < self.global_min_proto_dist[j]:
                argmin = list(np.unravel_index(np.argmin(proto_dist_j, axis=None), proto_dist_j.shape))
                argmin[0] = class_to_img_index_dict[target_class][argmin[0]]
                img_index_in_batch, h, w = argmin
                self.global_min_proto_dist[j] = batch_min_proto_dist_j
                self.global_min_fmap_patches[j] = protoL_input_[img_index_in_batch, :, h:h + proto_h, w:w + proto_w]
                self.cells[j] = h, w
                rf_box = reference_rf_box(self.rf_info, search_batch_input.size(2), h, w)
                original_img_j = np.transpose(search_batch_input[img_index_in_batch].numpy(), (1, 2, 0))
                original_img_size = original_img_j.shape[0]
                rf_img_j = original_img_j[rf_box[0]:rf_box[1], rf_box[2]:rf_box[3], :]  # noqa: F841 (the reference's crop)
                self.proto_rf_boxes[j] = [img_index_in_batch + self.start_index, *rf_box, search_y[img_index_in_batch].item()]
                proto_dist_img_j = proto_dist_[img_index_in_batch, j, :, :]
                proto_act_img_j = np.log((proto_dist_img_j + 1) / (proto_dist_img_j + net.epsilon))
                upsampled_act_img_j = cv2.resize(proto_act_img_j, dsize=(original_img_size, original_img_size),
                                                 interpolation=cv2.INTER_CUBIC)  # fmt: skip
                proto_bound_j = find_high_activation_crop(upsampled_act_img_j)
                proto_img_j = original_img_j[proto_bound_j[0]:proto_bound_j[1], proto_bound_j[2]:proto_bound_j[3], :]  # noqa: F841
                self.proto_bound_boxes[j] = [self.proto_rf_boxes[j, 0], *proto_bound_j, self.proto_rf_boxes[j, 5]]
        self.start_index += search_batch_input.shape[0]

    def finish(self, device: torch.device) -> PushResult:
        """The projection, as the reference copies it into the network (here into a fresh tensor,
        so that the benchmark's network keeps its prototypes), and the result to compare."""
        update = torch.tensor(np.reshape(self.global_min_fmap_patches, tuple(self.net.prototype_shape)),
                              dtype=torch.float32).to(device)  # fmt: skip
        return PushResult(torch.from_numpy(self.global_min_proto_dist.astype(np.float32)),
                          torch.from_numpy(self.proto_rf_boxes[:, 0].astype(np.int64)),
                          torch.from_numpy(self.cells[:, 0].astype(np.int64)),
                          torch.from_numpy(self.cells[:, 1].astype(np.int64)),
                          update.flatten(1).cpu())  # fmt: skip


def reference_rf_info(net: ProtoPNet, image_size: int) -> list:
    """The reference's ``proto_layer_rf_info`` (rows; the maps are square)."""
    rf = net.receptive_field(image_size)
    return [rf.n[0], rf.jump[0], rf.size[0], rf.start[0]]


@torch.no_grad()
def reference_push_work(net: ProtoPNet, batches: list[dict], outputs: list, rf_info: list,
                        device: torch.device) -> PushResult:
    """The reference push's work after the forward (each batch's ``(distances, features)`` in
    ``outputs``, on ``device`` as ``push_forward`` leaves them): ``ReferencePush`` over every batch."""
    push = ReferencePush(net, rf_info)
    for batch, (distances, features) in zip(batches, outputs):
        push.update_batch(batch["image"], batch["label"], distances, features)
    return push.finish(device)


@torch.no_grad()
def our_push(net: ProtoPNet, batches: list[dict], device: torch.device, image_size: int, records, class_names,
             outputs: Optional[list] = None):
    """What ``ProtoPNetModule.push_prototypes`` + ``PrototypePush.push`` do before the last-layer
    fit and the pictures: search (keeping source maps), projection, receptive-field boxes and the
    module's default ``before`` activation boxes (the prototypes' maps before projection). With
    ``outputs`` (each batch's ``(distances, features)``) the forward is skipped, to time the rest
    alone."""
    if outputs is None:
        search = search_nearest_patches(net, batches, device, keep_source_maps=True)
    else:
        search = PushSearch.for_net(net, keep_source_maps=True).to(device)
        for batch, (distances, features) in zip(batches, outputs):
            search.update(distances, features, batch["label"].to(device), batch["index"].to(device))
    before = net.prototype_vectors.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prototypes without an eligible image: expected with few images
        search.project(net)
    activation = net.distance_to_similarity(search.activation_maps(before))
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


def clocks() -> tuple[float, float]:
    """(wall, this process's CPU time over all its threads): on a shared machine the CPU time
    moves less with the other jobs than the wall time does."""
    return time.perf_counter(), time.process_time()


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
        wall, cpu = clocks()
        out = our_push(copy_, batches, device, args.image_size, records, class_names, shared_outputs)
        sync()
        return time.perf_counter() - wall, time.process_time() - cpu, out

    push_s, _, (result, described, activation) = min((ours() for _ in range(args.repeats)), key=lambda r: r[0])
    after_s, after_cpu_s, _ = min((ours(outputs) for _ in range(args.repeats)), key=lambda r: r[0])
    # The stand-in's work on the forward outputs computed above (its forward costs the same as
    # ours), so both sides share the forward time exactly.
    rf_info = reference_rf_info(net, args.image_size)

    def stand_in():
        wall, cpu = clocks()
        out = reference_push_work(net, batches, outputs, rf_info, device)
        sync()
        return time.perf_counter() - wall, time.process_time() - cpu, out

    reference_after_s, reference_after_cpu_s, reference = min(
        (stand_in() for _ in range(max(1, args.repeats - 1))), key=lambda r: r[0])
    found = result.image_index >= 0
    same = bool(torch.equal(result.image_index.cpu(), reference.image_index) and
                torch.allclose(result.distance.cpu()[found], reference.distance[found], rtol=1e-4, atol=1e-4))
    row = {
        "prototypes": net.num_prototypes,
        "images": args.images,
        "device": device.type,
        "forward_images_per_s": round(args.images / forward_s, 1),
        "push_images_per_s": round(args.images / push_s, 1),
        "push_over_forward": round(push_s / forward_s, 3),
        "reference_push_images_per_s": round(args.images / (forward_s + reference_after_s), 1),
        "push_speedup_over_reference": round((forward_s + reference_after_s) / push_s, 2),
        "after_forward_ms": round(after_s * 1e3, 1),
        "reference_after_forward_ms": round(reference_after_s * 1e3, 1),
        "after_forward_speedup": round(reference_after_s / after_s, 1),
        "after_forward_cpu_ms": round(after_cpu_s * 1e3, 1),
        "reference_after_forward_cpu_ms": round(reference_after_cpu_s * 1e3, 1),
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
          f"{args.device}, {torch.get_num_threads()} threads; stand-in: the reference's per-batch work ==")
    for r in rows:
        print(f"{r['prototypes']:5d} prototypes: push with boxes {r['push_images_per_s']:6.1f} images/s, "
              f"{r['push_over_forward']:.2f}x a bare forward pass ({r['forward_images_per_s']:.1f} images/s; aim <= 1.1x); "
              f"stand-in {r['reference_push_images_per_s']:.1f} images/s -> ours "
              f"{r['push_speedup_over_reference']:.2f}x (aim >= 1.5x)")
        print(f"{'':18}after the forward: ours {r['after_forward_ms']:6.0f} ms (CPU {r['after_forward_cpu_ms']:.0f} ms) "
              f"vs the stand-in's {r['reference_after_forward_ms']:6.0f} ms (CPU {r['reference_after_forward_cpu_ms']:.0f} ms)"
              f" -> {r['after_forward_speedup']:.1f}x; "
              f"same prototypes: {'yes' if r['same_prototypes_as_reference'] else 'NO'}"
              + (f"; pictures {r['pictures_per_s']:.0f}/s (not in the push)" if "pictures_per_s" in r else ""))
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
