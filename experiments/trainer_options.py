"""The Trainer's int-or-float options read as Lightning documents them: an integer is a count.

``limit_train_batches`` (and ``limit_val_batches``, ``limit_test_batches``,
``limit_predict_batches``) mean "this many batches" when given an integer and "this fraction of
the epoch" when given a float, so ``1`` is one batch and ``1.0`` the whole epoch. The Trainer
annotates them ``Optional[Union[int, float]]``, but Python caches unions by their set of types:
``lightning.fabric`` declares an ``Optional[Union[float, int]]`` first (``Fabric.clip_gradients``),
and the Trainer's annotation is that cached, float-first union. jsonargparse tries the types in
order, so a typed ``1`` (command line or YAML) became ``1.0``: a user asking for one batch
trained the whole epoch. The parser here adds those options with the int-first type; their
values and defaults are the Trainer's.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Union

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser


#: Trainer options where an int is a number of batches and a float a fraction of them.
COUNT_OR_FRACTION = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                     "overfit_batches", "val_check_interval")  # fmt: skip


def float_first_options(trainer_class: type) -> dict[str, tuple[Any, Any]]:
    """``{name: (int-first type, default)}`` of the ``trainer_class`` options in
    :data:`COUNT_OR_FRACTION` whose annotated union lists ``float`` before ``int``."""
    found = {}
    for name, parameter in inspect.signature(trainer_class.__init__).parameters.items():
        if name not in COUNT_OR_FRACTION:
            continue
        args = typing.get_args(parameter.annotation)
        if typing.get_origin(parameter.annotation) is Union and int in args and float in args:
            if args.index(float) < args.index(int):
                ordered = (int, float, *(a for a in args if a not in (int, float)))
                found[name] = (Union[ordered], parameter.default)  # a tuple of its own: not the cached union
    return found


class DermArgumentParser(LightningArgumentParser):
    def add_lightning_class_args(self, lightning_class, nested_key: str, subclass_mode: bool = False,
                                 required: bool = True) -> list[str]:
        if not (isinstance(lightning_class, type) and issubclass(lightning_class, Trainer)):
            return super().add_lightning_class_args(lightning_class, nested_key, subclass_mode, required)
        retyped = float_first_options(lightning_class)
        added = self.add_class_arguments(lightning_class, nested_key, fail_untyped=False, instantiate=False,
                                         sub_configs=True, skip=set(retyped))  # fmt: skip
        for name, (hint, default) in retyped.items():
            self.add_argument(f"--{nested_key}.{name}", type=hint, default=default,
                              help=f"Trainer's {name}: an integer is a number of batches, a float a fraction "
                                   "of the epoch (1 is one batch, 1.0 all)")
            added.append(f"{nested_key}.{name}")
        return added
