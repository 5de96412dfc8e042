"""A diverging run stops at once and says where; no non-finite model is checkpointed or scored.

Three checks, each where it costs no extra wait for the device:

- the training loss: every step's total loss is checked on the device (``isfinite``, no copy to
  the host), and the first non-finite step is kept there with its loss terms. On a GPU the host
  reads it as often as Lightning copies logged values to the host (every ``log_every_n_steps``),
  and at the epoch's last batch, before validation and the push; on a CPU there is no device to
  wait for and it is read every step. A ``.item()`` every step would make the host wait for each
  step's kernels to finish before queueing the next batch's.
- evaluation outputs: each validation/test batch's probabilities (or embeddings) and loss are
  checked the same way and read once, after the split's last batch: before any score is computed
  from them (an AUROC of NaN probabilities is a number, and a misleading one) and before the
  epoch's checkpoint.
- the weights, whenever a checkpoint is written (one check per file).

Under DDP every process reads at the same steps and they decide together (a process that stopped
alone would leave the others waiting in the next collective). Lightning's
``EarlyStopping(check_finite=True)`` stops a run whose *monitored metric* is NaN; it cannot see a
NaN loss behind a finite-looking AUROC, which is why the checks are here. ``Trainer(detect_anomaly=True)``
finds the operation that produced a NaN, at several times the cost of a step: the error message
suggests it for finding the cause.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch

from lightning_modules.errors import NonFiniteError

Decide = Callable[[bool], bool]  # every process's "something is wrong" -> whether any process said so


def _alone(bad: bool) -> bool:
    return bad


class FirstNonFinite:
    """The first recorded position (a step or batch number) whose watched values were not all
    finite, and those values, kept on the device until :meth:`read`."""

    def __init__(self) -> None:
        self._position: Optional[torch.Tensor] = None  # -1 while every value was finite
        self._values: dict[str, torch.Tensor] = {}

    def record(self, position: int, values: Mapping[str, torch.Tensor], decisive: Optional[torch.Tensor] = None) -> None:
        """Note ``values`` (name -> tensor) at ``position``, on the device. ``decisive``: the
        tensor whose finiteness counts (default: all of ``values``); the rest is context for the
        message."""
        reports = {name: _report(value) for name, value in values.items()}
        if decisive is not None:
            bad = ~torch.isfinite(decisive.detach()).all()
        else:
            bad = ~torch.isfinite(torch.stack(list(reports.values()))).all()
        if self._position is None:
            self._position = torch.full((), -1, dtype=torch.long, device=bad.device)
        new = bad & (self._position < 0)
        self._position = torch.where(new, position, self._position)
        for name, report in reports.items():
            old = self._values.get(name)
            self._values[name] = torch.where(new, report, old if old is not None else torch.zeros_like(report))

    def read(self) -> Optional[tuple[int, dict[str, float]]]:
        """``(position, {name: value})`` of the first non-finite record, or ``None`` (one host sync)."""
        if self._position is None or int(self._position) < 0:
            return None
        names = list(self._values)
        values = torch.stack([self._values[n] for n in names]).tolist() if names else []
        return int(self._position), dict(zip(names, values))


def _report(value: torch.Tensor) -> torch.Tensor:
    """What the message shows of a tensor: a scalar itself; of more, the first NaN or infinity if
    there is one, else the mean (so the report is finite exactly when the tensor is)."""
    flat = value.detach().float().reshape(-1)
    if flat.numel() == 1:
        return flat[0]
    if flat.numel() == 0:
        return flat.new_zeros(())
    finite = torch.isfinite(flat)
    return torch.where(finite.all(), flat.mean(), flat[torch.argmin(finite.to(torch.uint8))])


def describe(values: Mapping[str, float]) -> str:
    return ", ".join(f"{name} = {value:.4g}" for name, value in values.items())


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor], limit: int = 5) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding a NaN or an infinity (at most
    ``limit``); one host sync for all of them."""
    names = [n for n, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not names:
        return []
    try:
        flags = torch.stack([torch.isfinite(tensors[n]).all() for n in names]).tolist()
    except RuntimeError:  # tensors on several devices
        flags = [bool(torch.isfinite(tensors[n]).all()) for n in names]
    return [n for n, ok in zip(names, flags) if not ok][:limit]


class FiniteGuard:
    """The checks above, for one module. ``decide``: under DDP, the strategy's
    ``reduce_boolean_decision(..., all=False)``, so every process stops when one has to."""

    def __init__(self) -> None:
        self.training = FirstNonFinite()
        self.evaluation: dict[str, FirstNonFinite] = {}

    # -- training --------------------------------------------------------------------------------
    def record_training(self, step: int, loss: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> None:
        self.training.record(step, {"loss": loss, **terms}, decisive=loss)

    def check_training(self, where: Callable[[int], str], decide: Decide = _alone) -> None:
        found = self.training.read()
        if not decide(found is not None):
            return
        if found is None:
            raise NonFiniteError("another process's training loss became NaN or infinite; its message says where")
        step, values = found
        bad_terms = [n for n, v in values.items() if n != "loss" and not _finite(v)]
        terms = f" (non-finite term{'s' if len(bad_terms) > 1 else ''}: {', '.join(bad_terms)})" if bad_terms else ""
        first = (" That is the first step: look for NaN or infinite inputs (images, metadata) or a broken "
                 "initialisation." if step == 0 else "")  # fmt: skip
        raise NonFiniteError(
            f"the run diverged: the training loss is {_word(values['loss'])} at {where(step)}{terms}; "
            f"the loss terms then: {describe(values)}. Nothing was checkpointed after it and the run "
            "stops here; resuming would diverge again. Lower the learning rate (or use gradient "
            "clipping: --trainer.gradient_clip_val=1.0) and start a new run; "
            f"--trainer.detect_anomaly=true names the operation that produced it (slow).{first}")

    # -- validation / test -----------------------------------------------------------------------
    def record_outputs(self, stage: str, batch_idx: int, outputs: Mapping[str, torch.Tensor]) -> None:
        self.evaluation.setdefault(stage, FirstNonFinite()).record(batch_idx, outputs)

    def check_outputs(self, stage: str, epoch: int, decide: Decide = _alone, checkpoint: Optional[str] = None,
                      untrained: bool = False) -> None:
        record = self.evaluation.pop(stage, None)
        found = record.read() if record is not None else None
        if not decide(found is not None):
            return
        split = {"val": "validation", "test": "test"}.get(stage, stage)
        if found is None:
            raise NonFiniteError(f"another process's {split} outputs are NaN or infinite; its message says where")
        batch, values = found
        what = f"{'/'.join(n for n, v in values.items() if not _finite(v))} that are NaN or infinite on {split} " \
               f"batch {batch} ({describe(values)}), so no score is computed from them"
        if untrained:
            raise NonFiniteError(f"the untrained model gives {what}: look for NaN or infinite inputs (images, "
                                 "metadata) or a broken initialisation")
        if checkpoint:
            raise NonFiniteError(f"the checkpoint {checkpoint} gives {what}: the run that wrote it diverged")
        raise NonFiniteError(
            f"the run diverged: the model of epoch {epoch} gives {what} and it is not checkpointed. Lower the "
            "learning rate (or use --trainer.gradient_clip_val=1.0) and start a new run")


def check_weights(state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse to write (or use) ``what`` when a weight or buffer is NaN or infinite."""
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise NonFiniteError(f"{what}: the weights are NaN or infinite (e.g. {', '.join(bad)}); the run that "
                             "made them diverged, so they are not saved or used")


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def _word(value: float) -> str:
    return "NaN" if value != value else ("+inf" if value > 0 else "-inf")
