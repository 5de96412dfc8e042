"""The activation box of a pushed prototype (``pictures.activation_boxes``): the vectorised
version used by the push gives exactly the per-map box (``activation_box`` of ``upsample_map``),
and a box is where a hand-placed peak is."""

from __future__ import annotations

import numpy as np
import torch

from lightning_modules.protopnet.pictures import activation_box, activation_boxes, upsample_map


def test_a_single_hot_cell_gives_a_box_around_its_pixels():
    activation = torch.zeros(1, 4, 4)
    activation[0, 1, 2] = 1.0  # cell (1, 2) of a 4x4 map, upsampled to 16x16: pixels 4-7 x 8-11
    entries = [{"prototype": 0, "image_index": 3}]
    maps = activation_boxes(entries, activation, (16, 16), percentile=95.0)
    y0, y1, x0, x1 = entries[0]["activation_box"]
    # The top 5 % of 256 pixels is 13 pixels: the brightest of the bicubic bump, centred on the
    # cell's centre (5.5, 9.5) in pixel coordinates.
    assert y0 <= 5 < 6 <= y1 and x0 <= 9 < 10 <= x1
    assert 4 <= y0 and y1 <= 8 and 8 <= x0 and x1 <= 12
    assert entries[0]["activation_box"] == list(activation_box(maps[0], 95.0))
    mask = maps[0] >= np.percentile(maps[0], 95.0)
    assert mask.sum() >= 13 and mask[y0:y1, x0:x1].sum() == mask.sum()


def test_vectorised_boxes_equal_the_per_map_boxes():
    generator = torch.Generator().manual_seed(0)
    activation = torch.rand(150, 7, 7, generator=generator) ** 4  # peaky, like similarity maps
    entries = [{"prototype": j, **({"image_index": j} if j % 7 else {})} for j in range(150)]
    maps = activation_boxes(entries, activation, (56, 48), percentile=90.0, chunk=32)
    sourced = [e for e in entries if "image_index" in e]
    assert set(maps) == {e["prototype"] for e in sourced}
    assert all("activation_box" not in e for e in entries if "image_index" not in e)
    for entry in sourced:
        single = upsample_map(activation[entry["prototype"]], (56, 48))
        np.testing.assert_allclose(maps[entry["prototype"]], single, rtol=0, atol=1e-6)
        assert entry["activation_box"] == list(activation_box(single, 90.0)), entry["prototype"]
    fresh = [dict(e) for e in entries]
    assert activation_boxes(fresh, activation, (56, 48), percentile=90.0, keep_maps=False) == {}
    assert [e.get("activation_box") for e in fresh] == [e.get("activation_box") for e in entries]


def test_percentile_rows_is_numpys_percentile_bit_for_bit():
    from lightning_modules.protopnet.pictures import percentile_rows

    generator = torch.Generator().manual_seed(1)
    values = torch.rand(40, 1001, generator=generator) ** 3
    values[3] = 0.5  # all equal
    values[4, :500] = 0.0  # many ties
    for q in (0.0, 50.0, 90.0, 95.0, 99.9, 100.0):
        expected = np.percentile(values.numpy(), q, axis=1)
        assert np.array_equal(percentile_rows(values, q).numpy(), expected.astype(np.float32)), q


def test_bicubic_matrix_is_torchs_bicubic_upsample():
    from lightning_modules.protopnet.pictures import bicubic_matrix

    generator = torch.Generator().manual_seed(2)
    m = torch.rand(7, 5, generator=generator)
    expected = upsample_map(m, (50, 33))
    got = (bicubic_matrix(7, 50).float() @ m @ bicubic_matrix(5, 33).float().T).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
