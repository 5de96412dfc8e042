"""Vectorised push search against the reference (brute-force) algorithm and by hand."""

from __future__ import annotations

import io

import pytest
import torch

from lightning_modules.protopnet.push import PushSearch, brute_force_search
from lightning_modules.nets.protopnet import ProtoPNet

N_IMAGES, BATCH, SIZE = 16, 4, 64  # test_resnet at 64 px: 2x2 feature maps


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    """A tiny ProtoPNet (3 classes x 2 prototypes) and its outputs on 16 random images.

    Dataset indices are a permutation, so they are neither the batch positions nor sorted."""
    torch.manual_seed(0)
    net = ProtoPNet(3, backbone="test_resnet", prototypes_per_class=2, prototype_dim=8).eval()
    images = torch.randn(N_IMAGES, 3, SIZE, SIZE)
    labels = torch.tensor([0, 1, 2, 0] * 4)
    indices = torch.randperm(100)[:N_IMAGES]
    batches = []
    with torch.no_grad():
        for start in range(0, N_IMAGES, BATCH):
            part = slice(start, start + BATCH)
            out = net(images[part])
            batches.append((out.distances, out.features, labels[part], indices[part]))
    return net, images, labels, indices, batches


def run(net, batches, class_specific=True):
    search = PushSearch(net.prototype_class_identity, class_specific, net.prototype_dim)
    for batch in batches:
        search.update(*batch)
    return search


def assert_same(a, b):
    for name, x, y in zip(a._fields, a, b):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("class_specific", [True, False])
def test_vectorised_search_equals_brute_force(setup, class_specific):
    net, _, _, _, batches = setup
    assert batches[0][0].shape[-2:] == (2, 2)
    fast = run(net, batches, class_specific).result()
    slow = brute_force_search(batches, net.prototype_class_identity, class_specific)
    assert_same(fast, slow)
    assert fast.found.all()


def test_class_specific_search_uses_own_class_images(setup):
    net, _, labels, indices, batches = setup
    specific = run(net, batches, True).result()
    anywhere = run(net, batches, False).result()
    min_distances = torch.cat([b[0] for b in batches]).amin(dim=(2, 3))  # (N, m)
    label_of = dict(zip(indices.tolist(), labels.tolist()))
    for j, cls in enumerate(net.prototype_classes.tolist()):
        assert label_of[specific.image_index[j].item()] == cls
        assert specific.distance[j] == min_distances[labels == cls, j].min()
        assert anywhere.distance[j] == min_distances[:, j].min()
    assert (anywhere.distance <= specific.distance).all()
    assert (anywhere.distance < specific.distance).any()  # some prototype is closest to another class


def test_merging_halves_equals_one_pass(setup):
    net, _, _, _, batches = setup
    one_pass = run(net, batches).result()
    first, second = run(net, batches[:2]), run(net, batches[2:])
    merged = run(net, batches[:2])
    merged.merge(second.state_dict())
    assert_same(merged.result(), one_pass)

    # reduce(): the state travels as one packed tensor through the all-gather function
    packed = []
    second.reduce(lambda t: packed.append(t) or t)  # a single process: gather returns t itself
    assert_same(second.result(), run(net, batches[2:]).result())
    first.reduce(lambda t: torch.stack([packed[0], t]))  # rank order does not matter
    assert_same(first.result(), one_pass)


def test_state_dict_round_trip_through_a_checkpoint(setup):
    net, _, _, _, batches = setup
    search = run(net, batches[:3])
    buffer = io.BytesIO()
    torch.save(search.state_dict(), buffer)
    buffer.seek(0)
    restored = PushSearch(net.prototype_class_identity)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for batch in batches[3:]:
        restored.update(*batch)
    assert_same(restored.result(), run(net, batches).result())


def test_ties_prefer_the_smallest_image_index():
    # 2 prototypes (class 0, class 1), 1x2 maps, latent = 10 * batch position + column
    identity = torch.eye(2)
    distances = torch.tensor(
        [
            [[[0.5, 0.2]], [[0.7, 0.8]]],  # image 7, class 0
            [[[0.2, 0.9]], [[0.3, 0.4]]],  # image 3, class 0
            [[[0.1, 0.1]], [[0.1, 0.1]]],  # image 5, class 1
        ]
    )
    features = torch.tensor([[[[0.0, 1.0]]], [[[10.0, 11.0]]], [[[20.0, 21.0]]]])
    labels, indices = torch.tensor([0, 0, 1]), torch.tensor([7, 3, 5])
    search = PushSearch(identity)
    search.update(distances, features, labels, indices)
    r = search.result()
    # p0 (class 0): 0.2 at image 7 (0, 1) and at image 3 (0, 0) -> image 3, the smaller index.
    # (The reference keeps the first in batch order: image 7.)
    # p1 (class 1): only image 5, 0.1 at both columns -> column 0.
    assert r.distance.tolist() == pytest.approx([0.2, 0.1])
    assert r.image_index.tolist() == [3, 5] and r.h.tolist() == [0, 0] and r.w.tolist() == [0, 0]
    assert r.latent.flatten().tolist() == [10.0, 20.0]
    assert brute_force_search([(distances, features, labels, indices)], identity).image_index.tolist() == [7, 5]

    # A later tie with a smaller index wins, one with a larger index does not.
    tie = torch.tensor([[[[0.2, 0.5]], [[0.1, 0.9]]]])
    search.update(tie, torch.tensor([[[[30.0, 31.0]]]]), torch.tensor([0]), torch.tensor([9]))
    assert search.result().image_index.tolist() == [3, 5]
    search.update(tie, torch.tensor([[[[40.0, 41.0]]]]), torch.tensor([0]), torch.tensor([1]))
    assert search.result().image_index.tolist() == [1, 5] and search.result().latent.flatten().tolist() == [40.0, 20.0]

    # Without class restriction p0 may take image 5: 0.1 at (0, 0).
    anywhere = PushSearch(identity, class_specific=False)
    anywhere.update(distances, features, labels, indices)
    assert anywhere.result().image_index.tolist() == [5, 5]


def test_project_makes_each_prototype_its_source_patch(setup):
    net, images, labels, indices, batches = setup
    search = run(net, batches)
    saved = net.prototype_vectors.detach().clone()
    try:
        assert search.project(net) == []
        r = search.result()
        position = {i: p for p, i in enumerate(indices.tolist())}
        sources = torch.tensor([position[i] for i in r.image_index.tolist()])
        with torch.no_grad():
            out = net(images[sources])  # row j: the source image of prototype j
        j = torch.arange(net.num_prototypes)
        assert (out.distances[j, j, r.h, r.w] < 1e-5).all()
        assert (out.min_distances[j, j] < 1e-5).all()
    finally:
        with torch.no_grad():
            net.prototype_vectors.copy_(saved)


def test_prototypes_without_eligible_images_are_kept_and_reported(setup):
    net, _, labels, _, batches = setup
    without_class_2 = []
    for d, z, y, i in batches:
        keep = y != 2
        without_class_2.append((d[keep], z[keep], y[keep], i[keep]))
    search = run(net, without_class_2)
    saved = net.prototype_vectors.detach().clone()
    try:
        with pytest.warns(UserWarning, match=r"prototypes \[4, 5\]"):
            assert search.project(net) == [4, 5]
        r = search.result()
        assert r.image_index[4:].tolist() == [-1, -1] and torch.isinf(r.distance[4:]).all()
        assert torch.equal(net.prototype_vectors[4:], saved[4:])
        assert torch.equal(net.prototype_vectors[:4, :, 0, 0], r.latent[:4])
    finally:
        with torch.no_grad():
            net.prototype_vectors.copy_(saved)


def test_source_maps_give_each_prototypes_activation_without_another_forward(setup):
    """The search keeps each prototype's source image's latent map: the distances to it, before
    and after projection, equal a forward pass of that image (the boxes need no further pass)."""
    import copy

    net, images, _, indices, batches = setup
    search = PushSearch(net.prototype_class_identity, True, net.prototype_dim, keep_source_maps=True)
    for batch in batches:
        search.update(*batch)
    result = search.result()
    position = {int(i): k for k, i in enumerate(indices.tolist())}
    before = search.activation_maps(net.prototype_vectors)
    projected = copy.deepcopy(net)
    search.project(projected)
    after = search.activation_maps(projected.prototype_vectors)
    with torch.no_grad():
        for j in range(search.num_prototypes):
            image = images[position[int(result.image_index[j])]][None]
            assert torch.allclose(before[j], net(image).distances[0, j], atol=1e-5)
            assert torch.allclose(after[j], projected(image).distances[0, j], atol=1e-5)
            assert after[j][result.h[j], result.w[j]] == pytest.approx(0.0, abs=1e-5)  # its own patch

    # Two halves merged (as DDP's reduce does) keep the same maps as one pass.
    halves = [PushSearch(net.prototype_class_identity, True, net.prototype_dim, keep_source_maps=True) for _ in range(2)]
    for half, part in zip(halves, (batches[:2], batches[2:])):
        for batch in part:
            half.update(*batch)
    halves[0].reduce(lambda t: torch.stack([t, torch.cat([halves[1].state_dict()[k].double().reshape(len(t), -1)
                                                          for k in ("distance", "image_index", "h", "w", "latent",
                                                                    "source_maps")], dim=1)]))  # fmt: skip
    assert torch.equal(halves[0].source_maps, search.source_maps)
    assert_same(halves[0].result(), result)
