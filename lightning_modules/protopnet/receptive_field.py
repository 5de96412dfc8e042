"""Receptive field of a feature-map cell, traced through the network's actual computation graph.

Every cell of a CNN feature map is described per axis (rows, columns) by three numbers in input
pixels, with pixel ``i`` spanning ``[i, i + 1)``:

    jump  j : distance between the centres of neighbouring cells (the cumulative stride)
    size  r : side of the input region that can influence the cell
    start   : centre of cell 0 (the input itself has j = 1, r = 1, start = 0.5)

A convolution or pooling layer with kernel ``k``, dilation ``d``, stride ``s`` and padding ``p``
maps ``(j, r, start)`` to ``(j s, r + (k_eff - 1) j, start + ((k_eff - 1) / 2 - p) j)``, with
``k_eff = d (k - 1) + 1``. Applying that formula to ``named_modules()`` in definition order is
wrong for every network with branches: in a ResNet the 1x1 stride-2 ``downsample`` conv runs *in
parallel* with the block's main path, but a definition-order walk applies it *after* it, so each
stage's stride is counted twice (ResNet-18 would come out with a jump of 256 instead of 32). Here
the formula is propagated along the real data flow instead: the network runs once on a dummy image
under a ``TorchDispatchMode`` that sees every aten op, and each tensor carries the geometry of its
cells. Ops that merge tensors (``add``, ``mul``, ``cat``) take the union of their inputs' regions,
which is the longest path through the graph. By default the run happens on the ``meta`` device:
no weights are copied and nothing is computed, so even VGG-16 is traced in milliseconds.

Global context is ignored, as in the conventional definition: squeeze-and-excitation gates
(a spatial mean), GroupNorm/LayerNorm statistics and attention make every cell depend on the whole
image, but only the local convolution/pooling path is measured; those ops are listed in
``ReceptiveField.global_context``. Anything else the tracer cannot follow (an upsampling, a
space-to-depth reshape) raises instead of silently shrinking the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn
from torch.func import functional_call
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten
Size = Union[int, Sequence[int]]

# Geometry of one axis: (jump, size, start). A tensor's geometry is (rows, columns).
_Axis = tuple[float, float, float]
_Geometry = tuple[_Axis, _Axis]
_PIXELS: _Geometry = ((1.0, 1.0, 0.5), (1.0, 1.0, 0.5))  # the input image: one cell per pixel


@dataclass(frozen=True)
class ReceptiveField:
    """Cells of one feature map, per axis ``(rows, columns)``, in input pixels (see module doc)."""

    n: tuple[int, int]  # cells at ``image_size``
    jump: tuple[float, float]
    size: tuple[float, float]
    start: tuple[float, float]  # centre of cell (0, 0)
    image_size: tuple[int, int]
    global_context: tuple[str, ...] = ()  # ops whose whole-image dependence is not counted

    def centre(self, row: int, col: int) -> tuple[float, float]:
        """Centre of cell ``(row, col)`` in continuous pixel coordinates."""
        return self.start[0] + row * self.jump[0], self.start[1] + col * self.jump[1]


def _pair(value: Size) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


def _window(geometry: _Geometry, kernel, stride, padding, dilation) -> _Geometry:
    """The conv/pool formula of the module docstring, per axis."""
    out = []
    for (j, r, start), k, s, p, d in zip(geometry, kernel, stride, padding, dilation):
        k_eff = d * (k - 1) + 1
        out.append((j * s, r + (k_eff - 1) * j, start + ((k_eff - 1) / 2 - p) * j))
    return out[0], out[1]


def _ints(value, default) -> tuple[int, int]:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        value = default
    if isinstance(value, int):
        return value, value
    if len(value) == 1:
        return int(value[0]), int(value[0])
    return int(value[0]), int(value[1])


def _conv_rule(geometry: _Geometry, args: tuple) -> _Geometry:
    # aten.convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    weight, stride, padding, dilation, transposed = args[1], args[3], args[4], args[5], args[6]
    if transposed:
        raise NotImplementedError("receptive field: transposed convolutions are not supported")
    if weight.dim() != 4:
        raise NotImplementedError(f"receptive field: only 2-D convolutions are supported, weight {tuple(weight.shape)}")
    return _window(geometry, tuple(weight.shape[2:]), _ints(stride, 1), _ints(padding, 0), _ints(dilation, 1))


def _max_pool_rule(geometry: _Geometry, args: tuple) -> _Geometry:
    # aten.max_pool2d[_with_indices](input, kernel_size, stride=[], padding=0, dilation=1, ceil_mode)
    kernel = _ints(args[1], None)
    stride = _ints(args[2] if len(args) > 2 else None, kernel)
    padding = _ints(args[3] if len(args) > 3 else None, 0)
    dilation = _ints(args[4] if len(args) > 4 else None, 1)
    return _window(geometry, kernel, stride, padding, dilation)


def _avg_pool_rule(geometry: _Geometry, args: tuple) -> _Geometry:
    # aten.avg_pool2d(input, kernel_size, stride=[], padding=0, ceil_mode, count_include_pad, divisor)
    kernel = _ints(args[1], None)
    stride = _ints(args[2] if len(args) > 2 else None, kernel)
    padding = _ints(args[3] if len(args) > 3 else None, 0)
    return _window(geometry, kernel, stride, padding, (1, 1))


def _pad_rule(geometry: _Geometry, args: tuple) -> _Geometry:
    # constant_pad_nd / reflection_pad2d / replication_pad2d: pad = (left, right, top, bottom, ...).
    # Padding adds virtual cells before cell 0, so the new cell 0 sits ``before * j`` earlier.
    # (Reflection padding copies interior cells; as usual, it is treated like zero padding.)
    pad = list(args[1])
    left, top = (pad + [0, 0, 0, 0])[0], (pad + [0, 0, 0, 0])[2]
    (jr, rr, sr), (jc, rc, sc) = geometry
    return (jr, rr, sr - top * jr), (jc, rc, sc - left * jc)


def _slice_rule(geometry: _Geometry, args: tuple, ndim: int, size: int) -> _Geometry:
    # aten.slice(input, dim, start, end, step) on a spatial axis: cell i of the output is cell
    # first + i * step of the input.
    axis = (args[1] % ndim) - (ndim - 2)
    first = args[2] if len(args) > 2 and args[2] is not None else 0
    first = min(max(first + size if first < 0 else first, 0), size)
    step = args[4] if len(args) > 4 else 1
    out = list(geometry)
    j, r, start = out[axis]
    out[axis] = (j * step, r, start + first * j)
    return out[0], out[1]


_WINDOW_RULES: dict[Any, Callable[[_Geometry, tuple], _Geometry]] = {
    aten.convolution: _conv_rule,
    aten.max_pool2d_with_indices: _max_pool_rule,
    aten.max_pool2d: _max_pool_rule,
    aten.avg_pool2d: _avg_pool_rule,
    aten.constant_pad_nd: _pad_rule,
    aten.reflection_pad2d: _pad_rule,
    aten.replication_pad2d: _pad_rule,
}
# Reinterpret the same elements in row-major order with another shape.
_VIEWS = {
    aten.view, aten._unsafe_view, aten.reshape, aten.unsqueeze, aten.squeeze, aten.flatten, aten.unflatten, aten.alias,
}
# Ops that move content across cells or resample the grid: no sound rule here.
_UNSUPPORTED = ("upsample", "grid_sampler", "pixel_shuffle", "pixel_unshuffle", "roll", "flip", "im2col", "col2im")

# Where the two spatial axes live in a tensor. A layout has one group of "atoms" per tensor dim;
# an atom is (size, tag) with tag "row", "col" or None, and the dim's size is the product of its
# group. Views regroup the atoms (ConvNeXt's MLP runs nn.Linear on a (B*H*W, C) view and reshapes
# back), permutes reorder the groups (ConvNeXt's channels-last LayerNorm).
_Atom = tuple[int, Optional[str]]
_Layout = tuple[tuple[_Atom, ...], ...]


def _plain(size: int) -> tuple[_Atom, ...]:
    return () if size == 1 else ((size, None),)


def _nchw(shape: Sequence[int]) -> _Layout:
    return tuple(_plain(s) for s in shape[:-2]) + (((shape[-2], "row"),), ((shape[-1], "col"),))


def _tagged(layout: _Layout) -> tuple[int, ...]:
    return tuple(g for g, group in enumerate(layout) if any(tag for _, tag in group))


def _is_nchw(layout: _Layout, shape: Sequence[int]) -> bool:
    """Rows and columns are the last two dims, each on its own (the other dims may be anything,
    e.g. channels regrouped by a channel shuffle)."""
    n = len(shape)
    return (
        len(layout) == n
        and _tagged(layout) == (n - 2, n - 1)
        and layout[-2] == ((shape[-2], "row"),)
        and layout[-1] == ((shape[-1], "col"),)
    )


def _regroup(layout: _Layout, shape: Sequence[int]) -> Optional[_Layout]:
    """Layout after a view to ``shape``, or None when a spatial axis is split or dropped."""
    queue = [a for group in layout for a in group if a[1] is not None or a[0] != 1]
    groups: list[tuple[_Atom, ...]] = []
    for size in shape:
        group: list[_Atom] = []
        if size == 1 and queue and queue[0][0] == 1:  # a 1-cell spatial axis kept as its own dim
            groups.append((queue.pop(0),))
            continue
        product = 1
        while queue and product < size:
            atom = queue[0]
            if size % (product * atom[0]) == 0:
                group.append(queue.pop(0))
                product *= atom[0]
            elif atom[1] is None and atom[0] % (size // product) == 0:  # split a channel-like atom
                need = size // product
                group.append((need, None))
                queue[0] = (atom[0] // need, None)
                product = size
            else:
                return None
        if product != size:
            return None
        groups.append(tuple(group))
    return tuple(groups) if all(a == (1, None) for a in queue) else None


def _union(geometries: list[_Geometry], op: str) -> _Geometry:
    """Smallest region holding every input's region: the longest path through a merge."""
    out = []
    for axis in range(2):
        jumps = {g[axis][0] for g in geometries}
        if len(jumps) != 1:
            raise NotImplementedError(f"receptive field: {op} merges maps with different jumps {sorted(jumps)}")
        lo = min(g[axis][2] - g[axis][1] / 2 for g in geometries)
        hi = max(g[axis][2] + g[axis][1] / 2 for g in geometries)
        out.append((jumps.pop(), hi - lo, (lo + hi) / 2))
    return out[0], out[1]


# Reductions: a reduction over a spatial axis is global context (ignored, reported); over other
# axes (ResNeSt sums its radix groups, CBAM averages channels) the cells are untouched.
_REDUCTIONS = {
    aten.mean, aten.sum, aten.amax, aten.amin, aten.max, aten.min, aten.var, aten.std, aten.var_mean,
    aten.std_mean, aten.logsumexp, aten.norm, aten.linalg_vector_norm, aten.prod, aten.any, aten.all,
}
_GLOBAL_POOLS = {aten._adaptive_avg_pool2d, aten.adaptive_max_pool2d}


def _reduced_dims(packet, args: tuple, ndim: int) -> set[int]:
    """The dims a reduction collapses (all of them when it names none)."""
    position = 2 if packet in (aten.norm, aten.linalg_vector_norm) else 1  # (x, p, dim, ...)
    dims = args[position] if len(args) > position else None
    if isinstance(dims, int) and not isinstance(dims, bool):
        return {dims % ndim}
    if isinstance(dims, (list, tuple)) and len(dims) > 0:
        return {d % ndim for d in dims}
    return set(range(ndim))


_LOST = "lost"  # a tensor computed from the image in a way the tracer could not follow


class _GeometryTracer(TorchDispatchMode):
    """Attaches ``(geometry, layout)`` to every tensor derived from the traced input.

    Soundness: a tensor whose geometry cannot be followed (an unknown reshape, a select on a
    spatial axis, ...) is marked lost, and so is everything computed from it, so it can never be
    silently dropped from a merge; only reductions over the spatial axes (global context) end a
    path without a trace.
    """

    def __init__(self) -> None:
        super().__init__()
        self.info: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.global_context: set[str] = set()
        self.lost_at: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t in self.info]
        if inputs:
            outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            name = str(func.overloadpacket)
            if any(self.info[t] is _LOST for t in inputs):
                status = "lost"
            else:
                status = self._propagate(func.overloadpacket, name, args, inputs, outputs)
            if status == "lost":
                self.lost_at.add(name)
                for t in outputs:
                    self.info[t] = _LOST
            elif status == "global":
                self.global_context.add(name)
        return out

    def _propagate(
        self, packet, name: str, args: tuple, inputs: list[torch.Tensor], outputs: list[torch.Tensor]
    ) -> str:
        """Set the outputs' geometry; return "ok", "global" (spatial reduction) or "lost"."""
        if any(word in name for word in _UNSUPPORTED):
            raise NotImplementedError(f"receptive field: no rule for {name}")
        source = args[0] if args and isinstance(args[0], torch.Tensor) and args[0] in self.info else None
        if source is None:  # e.g. the image enters as a later argument: use the generic rule
            return self._elementwise(name, inputs, outputs)
        geometry, layout = self.info[source]
        ndim, tagged = source.dim(), _tagged(layout)

        if packet in _WINDOW_RULES:
            if not _is_nchw(layout, source.shape):
                raise NotImplementedError(f"receptive field: {name} on a tensor that is not (N, C, H, W)")
            geometry = _WINDOW_RULES[packet](geometry, args)
            for t in outputs:  # max_pool2d_with_indices also returns the indices
                if t.dim() == ndim:
                    self.info[t] = (geometry, _nchw(t.shape))
            return "ok"
        if packet is aten.slice:
            out, dim = outputs[0], (args[1] if len(args) > 1 else 0) % ndim
            if dim not in tagged:  # channel slicing: the cells are untouched
                kept = tuple(_plain(out.shape[g]) if g == dim else layout[g] for g in range(ndim))
                self.info[out] = (geometry, kept)
            elif _is_nchw(layout, source.shape):  # strided spatial slicing (space-to-depth stems)
                self.info[out] = (_slice_rule(geometry, args, ndim, source.shape[dim]), _nchw(out.shape))
            else:
                return "lost"
            return "ok"
        if packet in (aten.select, aten.unbind):
            dim = (args[1] if len(args) > 1 else 0) % ndim
            if dim in tagged:
                return "lost"
            for t in outputs:
                self.info[t] = (geometry, layout[:dim] + layout[dim + 1 :])
            return "ok"
        if packet in (aten.permute, aten.transpose, aten.t):
            order = list(range(ndim))
            if packet is aten.permute:
                order = [d % ndim for d in args[1]]
            else:
                a, b = (args[1] % ndim, args[2] % ndim) if packet is aten.transpose else (0, 1)
                order[a], order[b] = order[b], order[a]
            self.info[outputs[0]] = (geometry, tuple(layout[d] for d in order))
            return "ok"
        if packet in _VIEWS:
            regrouped = _regroup(layout, outputs[0].shape)
            if regrouped is None:
                return "lost"
            self.info[outputs[0]] = (geometry, regrouped)
            return "ok"
        if packet in _GLOBAL_POOLS:
            if tuple(outputs[0].shape[-2:]) != (1, 1):
                raise NotImplementedError(f"receptive field: no rule for {name} to {tuple(outputs[0].shape[-2:])}")
            return "global"
        if packet in _REDUCTIONS and not any(isinstance(a, torch.Tensor) for a in args[1:]):  # not max(x, y)
            dims = _reduced_dims(packet, args, ndim)
            if dims & set(tagged):
                return "global"
            for t in outputs:
                if t.dim() == ndim:  # keepdim
                    self.info[t] = (geometry, tuple(() if g in dims else layout[g] for g in range(ndim)))
                elif t.dim() == ndim - len(dims):
                    self.info[t] = (geometry, tuple(layout[g] for g in range(ndim) if g not in dims))
            return "ok"
        if packet is aten.as_strided:
            return "lost"
        return self._elementwise(name, inputs, outputs)

    def _elementwise(self, name: str, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> str:
        """Any other op: an output keeps the spatial axes of the inputs whose spatial dims it
        shares (size and position), whatever happens to the other dims (channel concatenation,
        splits, matrix products over channels, normalisation); their regions are merged."""
        assigned = False
        for t in outputs:
            matches = []
            for i in inputs:
                geometry, layout = self.info[i]
                tagged = _tagged(layout)
                if i.dim() == t.dim() and all(t.shape[g] == i.shape[g] for g in tagged):
                    matches.append((geometry, layout, tagged))
            if not matches:
                continue
            tagged = matches[0][2]
            if any(m[2] != tagged or any(m[1][g] != matches[0][1][g] for g in tagged) for m in matches):
                return "lost"
            layout = tuple(matches[0][1][g] if g in tagged else _plain(t.shape[g]) for g in range(t.dim()))
            geometries = [m[0] for m in matches]
            self.info[t] = (_union(geometries, name) if len(geometries) > 1 else geometries[0], layout)
            assigned = True
        if not assigned:
            return "lost"
        if any(all(i.dim() != t.dim() or any(t.shape[g] != i.shape[g] for g in _tagged(self.info[i][1]))
                   for t in outputs) for i in inputs):
            return "global"  # an input broadcast over the grid (its own geometry not counted)
        return "ok"


def _maps(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return list(output.values())
    return list(output)


def _run(module: nn.Module, image_size: Size, in_chans: int, device: Optional[str]):
    """One forward pass of ``module`` in eval mode on a dummy image, under the tracer."""
    height, width = _pair(image_size)
    modes = {m: m.training for m in module.modules()}
    module.eval()
    tracer = _GeometryTracer()
    try:
        with torch.no_grad():
            if device == "meta":
                tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
                tensors = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
                x = torch.zeros(1, in_chans, height, width, device="meta")
                tracer.info[x] = (_PIXELS, _nchw(x.shape))
                with tracer:
                    output = functional_call(module, tensors, (x,))
            else:
                param = next(module.parameters(), None)
                where = device or (param.device if param is not None else "cpu")
                x = torch.zeros(1, in_chans, height, width, device=where)
                tracer.info[x] = (_PIXELS, _nchw(x.shape))
                with tracer:
                    output = module(x)
    finally:
        for m, training in modes.items():
            m.training = training
    return _maps(output), tracer, (height, width)


def receptive_fields(
    module: nn.Module, image_size: Size = 224, in_chans: int = 3, device: Optional[str] = "meta"
) -> list[ReceptiveField]:
    """Receptive field of every feature map returned by ``module`` (a tensor, a list or a dict of
    maps, e.g. a timm ``features_only`` backbone), for an input of ``image_size`` pixels.

    ``jump``, ``size`` and ``start`` do not depend on the image size for fixed-padding networks,
    but ``n`` does, and so does ``start`` for TensorFlow-style "same" padding (timm's ``tf_*``
    models pad depending on the input size), so trace at the size you train at.
    ``device="meta"`` runs without weights or compute (falling back to a real run for modules
    that cannot run on meta tensors, e.g. with unregistered tensor attributes); ``None`` runs the
    module as it is.
    """
    try:
        maps, tracer, size = _run(module, image_size, in_chans, device)
    except RuntimeError as err:
        if device != "meta" or isinstance(err, NotImplementedError):
            raise
        maps, tracer, size = _run(module, image_size, in_chans, None)
    fields = []
    context = tuple(sorted(tracer.global_context))
    for i, fmap in enumerate(maps):
        if fmap not in tracer.info or not _is_nchw(tracer.info[fmap][1], fmap.shape):
            raise ValueError(
                f"feature map {i} of shape {tuple(fmap.shape)} lost its spatial geometry "
                f"(ops that could not be followed: {sorted(tracer.lost_at)}, global: {list(context)}); "
                "only convolutional maps are supported"
            )
        rows, cols = tracer.info[fmap][0]
        fields.append(
            ReceptiveField(
                n=(int(fmap.shape[-2]), int(fmap.shape[-1])),
                jump=(rows[0], cols[0]),
                size=(rows[1], cols[1]),
                start=(rows[2], cols[2]),
                image_size=size,
                global_context=context,
            )
        )
    return fields


def receptive_field(
    module: nn.Module, image_size: Size = 224, output_index: int = -1, in_chans: int = 3, device: Optional[str] = "meta"
) -> ReceptiveField:
    """Receptive field of the ``output_index``-th map returned by ``module`` (default: the last,
    i.e. the only one of a backbone created with ``out_indices=(stage,)``)."""
    return receptive_fields(module, image_size, in_chans, device)[output_index]


def cell_box(rf: ReceptiveField, row: int, col: int, image_size: Optional[Size] = None) -> tuple[int, int, int, int]:
    """Pixel box ``(y0, y1, x0, x1)`` (end-exclusive) of cell ``(row, col)``'s receptive field,
    clipped to the image (default: the size ``rf`` was traced at). Fractional edges are rounded
    outwards, so the box always holds the whole field."""
    height, width = _pair(image_size) if image_size is not None else rf.image_size
    if (height, width) == rf.image_size and not (0 <= row < rf.n[0] and 0 <= col < rf.n[1]):
        raise IndexError(f"cell ({row}, {col}) is outside the {rf.n[0]}x{rf.n[1]} feature map")
    cy, cx = rf.centre(row, col)
    y0 = max(0, math.floor(cy - rf.size[0] / 2))
    y1 = min(height, math.ceil(cy + rf.size[0] / 2))
    x0 = max(0, math.floor(cx - rf.size[1] / 2))
    x1 = min(width, math.ceil(cx + rf.size[1] / 2))
    return y0, y1, x0, x1
