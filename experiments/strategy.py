"""DDP for modules whose parameters go without gradients in some steps.

DDP expects every parameter that required a gradient when it wrapped the model to get one in
every backward pass; a module that freezes parameters for a while (ProtoPNet: the backbone in
warm-up, the last layer outside the push) declares ``toggles_requires_grad``, and its run gets
the strategy's ``find_unused_parameters_true`` variant, which looks for unused parameters after
each forward pass (at some cost) instead of waiting for their gradients. ``auto`` is Lightning's
``ddp`` as soon as the run has more than one process.
"""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch.strategies import StrategyRegistry


def find_unused_variant(strategy: Any, world_size: int) -> Optional[str]:
    """The registered ``<strategy>_find_unused_parameters_true`` to run instead of ``strategy``, or
    ``None`` (one process, an explicit ``find_unused_parameters`` choice, a strategy object)."""
    if not isinstance(strategy, str) or "find_unused_parameters" in strategy:
        return None
    name = "ddp" if strategy == "auto" and world_size > 1 else strategy
    variant = f"{name}_find_unused_parameters_true"
    return variant if variant in StrategyRegistry else None
