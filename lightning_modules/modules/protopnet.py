"""ProtoPNet training: the paper's stages as one schedule, and the push.

    epochs [0, warmup)     warm-up: backbone frozen; add-on and prototypes at warm_lr
    epochs [warmup, ...)   joint: backbone joint_backbone_lr, add-on and prototypes joint_lr,
                           x joint_lr_gamma every joint_lr_step epochs
    push epochs            ``push_prototypes`` projects every prototype onto its nearest training
                           patch and optimises the last layer alone (convex), after the epoch's
                           last batch and before that epoch's validation; the module brings the
                           ``PrototypePush`` callback that decides when and records the result
                           (``configure_callbacks``: push_start, push_every, push_at_end)

The stage learning rates are a ``LambdaLR`` with one factor per parameter group; the backbone is
frozen in warm-up by ``requires_grad`` (so Adam keeps no moments from a stage where it does not
train), and its BatchNorm layers stay in train mode and keep updating their statistics, as the
reference code does (``warm_only`` in train_and_test.py of
https://github.com/cfchen-duke/ProtoPNet/tree/81bf2b70cb60e4f36e25e8be386eb616b7459321).
Lightning's ``BaseFinetuning`` is not used for this: its ``freeze(train_bn=True)`` trains the
BatchNorm weights in warm-up, ``train_bn=False`` stops their statistics, and neither is the
paper's warm-up; its ``unfreeze_and_add_param_group`` would add the backbone's parameter group
at the joint stage, which the per-group ``LambdaLR`` factors and the optimiser state of an exact
resume would then have to follow. Under DDP the frozen parameters get no gradient, so the module
declares ``toggles_requires_grad`` and the CLI runs DDP's ``find_unused_parameters`` variant.

The last layer keeps its +1 / -0.5 initialisation during warm-up and joint training, as in the
paper. Checkpoints are selected on ``val/push_auroc``: the validation AUROC of epochs that ended
with a push (0 otherwise), so the tested model's prototypes are real training patches. (The
reference code picked checkpoints on the test set: its ``main.py``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR

from datamodules.arguments import check_choice, check_int, check_number
from lightning_modules.callbacks.prototype_push import PrototypePush
from lightning_modules.contracts import PrototypeNet, StepResult
from lightning_modules.modules.classifier import LesionClassifier
from lightning_modules.protopnet.projection import (
    broadcast_buffers_from_rank0,
    fit_last_layer,
    search_nearest_patches,
    similarity_vectors,
)
from lightning_modules.protopnet.push import PushResult
from lightning_modules.training.losses import PROTOPNET_LOSS_WEIGHTS, protopnet_loss
from lightning_modules.utils.progress import progress


class StageFactor:
    """``LambdaLR`` factor of one parameter group: ``warm_factor`` in warm-up, then
    ``gamma ** ((epoch - warmup_epochs) // step)``. An object rather than a lambda so that its
    settings travel in the scheduler's state."""

    def __init__(self, warmup_epochs: int, warm_factor: float, step: int, gamma: float):
        self.warmup_epochs, self.warm_factor, self.step, self.gamma = warmup_epochs, warm_factor, step, gamma

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return self.warm_factor
        return self.gamma ** ((epoch - self.warmup_epochs) // self.step)


@dataclass
class PushOutcome:
    epoch: int
    result: PushResult  # per prototype: distance, source image index, cell, latent vector
    unchanged: list[int]  # prototypes without an eligible image (kept their vectors)
    last_layer_loss: float
    activation: torch.Tensor  # (m, H, W) similarity of each prototype on its source image's grid


class ProtoPNetModule(LesionClassifier):
    toggles_requires_grad = True  # the backbone in warm-up; the last layer outside the push

    def __init__(
        self,
        cluster_weight: float = PROTOPNET_LOSS_WEIGHTS["clst"],
        separation_weight: float = PROTOPNET_LOSS_WEIGHTS["sep"],
        l1_weight: float = PROTOPNET_LOSS_WEIGHTS["l1"],
        warmup_epochs: int = 5,
        warm_lr: float = 3e-3,
        joint_backbone_lr: float = 1e-4,
        joint_lr: float = 3e-3,
        joint_lr_step: int = 5,
        joint_lr_gamma: float = 0.1,
        weight_decay: float = 1e-3,
        last_layer_epochs: int = 20,
        last_layer_lr: float = 1e-4,
        last_layer_batch_size: int = 256,
        push_start: int = 10,
        push_every: int = 10,
        push_at_end: bool = True,
        activation_box: str = "before",
        monitor: str = "val/push_auroc",
        **kwargs: Any,
    ):
        """
        Args:
            cluster_weight, separation_weight, l1_weight: the paper's 0.8, -0.08, 1e-4.
            warmup_epochs, warm_lr, joint_backbone_lr, joint_lr, joint_lr_step, joint_lr_gamma:
                the stage schedule (the paper's values by default).
            weight_decay: on backbone and add-on layers (not on prototypes), as in the paper's code.
            last_layer_epochs, last_layer_lr, last_layer_batch_size: the last-layer-only
                optimisation after each push (one Adam for the run: :meth:`last_layer_optimizer`).
            push_start, push_every: push after epochs push_start, push_start + push_every, ...
                (counted from 1, as in the paper: "push at epoch 10 and every 10 epochs").
            push_at_end: also push after the final epoch, so the final model's prototypes are
                training patches.
            activation_box: which similarity map a push record's activation box (the top 5 % of
                the upsampled map on the source image) is taken from: ``before`` projection (the
                prototype as it was trained, which the patch was chosen for; the reference ``push.py``'s
                choice) or ``after`` (the projected prototype, whose map peaks at its own patch).
                Both come from the source image's latent map kept by the search pass, so drawing
                them costs no further pass through the network.
            **kwargs: :class:`~lightning_modules.modules.classifier.LesionClassifier` arguments; the
                network (``net``) must be a :class:`~lightning_modules.contracts.PrototypeNet`
                (``lightning_modules.nets.protopnet.ProtoPNet``).
        """
        super().__init__(monitor=monitor, **kwargs)
        check_choice("--model.init_args.activation_box", activation_box, ("before", "after"))
        for name in ("warm_lr", "joint_backbone_lr", "joint_lr", "last_layer_lr", "joint_lr_gamma"):
            check_number(f"--model.init_args.{name}", locals()[name], above=0)
        check_number("--model.init_args.weight_decay", weight_decay, minimum=0)
        check_number("--model.init_args.l1_weight", l1_weight, minimum=0)
        for name, minimum in (("warmup_epochs", 0), ("joint_lr_step", 1), ("last_layer_epochs", 0),
                              ("last_layer_batch_size", 1), ("push_start", 1), ("push_every", 1)):
            check_int(f"--model.init_args.{name}", locals()[name], minimum=minimum)
        if not isinstance(self.net, PrototypeNet):
            raise TypeError(f"ProtoPNetModule needs a network with prototypes, got {type(self.net).__name__}")
        self.cost_weights = {"clst": cluster_weight, "sep": separation_weight, "l1": l1_weight}
        self.push_epochs: list[int] = []
        self._stage: Optional[str] = None
        self._last_layer_optimizer: Optional[torch.optim.Adam] = None
        self._last_layer_state: Optional[dict] = None  # from a checkpoint, until the next push

    def forward(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(image, meta).logits

    def step(self, batch: dict, stage: str) -> StepResult:
        output = self.net(batch["image"], batch["meta"])
        total, terms = protopnet_loss(output, batch["label"], self.net, self.cost_weights,
                                      self.net.class_specific, ce_loss=self.criterion)  # fmt: skip
        maps = self.net.attention_from_output(output) if stage != "train" else None
        return StepResult(loss=total, probs=output.logits.detach().float().softmax(dim=1), terms=terms, maps=maps)

    # -- the stage schedule ----------------------------------------------------------------------
    def stage(self, epoch: int) -> str:
        return "warm" if epoch < self.hparams.warmup_epochs else "joint"

    def parameter_groups(self) -> list[dict]:
        groups = self.net.parameter_groups()
        hp = self.hparams
        return [
            {"params": groups["backbone"], "name": "backbone", "lr": hp.joint_backbone_lr, "weight_decay": hp.weight_decay},
            {"params": groups["add_on"], "name": "add_on", "lr": hp.joint_lr, "weight_decay": hp.weight_decay},
            {"params": groups["prototypes"], "name": "prototypes", "lr": hp.joint_lr, "weight_decay": 0.0},
        ]  # the last layer is trained only after pushes

    def configure_optimizers(self) -> Any:
        if self.scheduler_factory is not None:
            raise ValueError("ProtoPNet sets its learning rates per stage; leave `scheduler` unset")
        hp = self.hparams
        optimizer = self.optimizer_factory(self.parameter_groups())
        warm_factor = {"backbone": 0.0, "add_on": hp.warm_lr / hp.joint_lr, "prototypes": hp.warm_lr / hp.joint_lr}
        factors = [StageFactor(hp.warmup_epochs, warm_factor[g["name"]], hp.joint_lr_step, hp.joint_lr_gamma)
                   for g in optimizer.param_groups]  # fmt: skip
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": LambdaLR(optimizer, factors), "interval": "epoch"}}

    def on_train_epoch_start(self) -> None:
        stage = self.stage(self.current_epoch)
        for param in self.net.backbone.parameters():
            param.requires_grad_(stage == "joint")
        for param in self.net.last_layer.parameters():
            param.requires_grad_(False)
        if stage != self._stage:
            rates = {g["name"]: g["lr"] for g in self.trainer.optimizers[0].param_groups}
            rank_zero_info(f"ProtoPNet: epoch {self.current_epoch} starts the {stage} stage ({rates})")
            self._stage = stage
        self.log("train/stage_joint", float(stage == "joint"), on_epoch=True, on_step=False)

    # -- the push --------------------------------------------------------------------------------
    def configure_callbacks(self) -> list[PrototypePush]:
        """The push, on this module's schedule, when fitting; it records each push in the run folder
        and in checkpoints (its state)."""
        if self.trainer.state.fn != TrainerFn.FITTING:
            return []  # nothing to push in a test; the fit's push (and its record) stays as it was
        hp = self.hparams
        return [PrototypePush(push_start=hp.push_start, push_every=hp.push_every, push_at_end=hp.push_at_end)]

    def last_layer_optimizer(self) -> torch.optim.Adam:
        """The last layer's Adam, one for the whole run as in the reference code (``main.py`` of
        https://github.com/cfchen-duke/ProtoPNet/tree/81bf2b70cb60e4f36e25e8be386eb616b7459321
        builds ``last_layer_optimizer`` once): its moments carry over from one push to the next,
        and checkpoints keep them, so a resumed run's next push is the uninterrupted run's."""
        if self._last_layer_optimizer is None:
            self._last_layer_optimizer = torch.optim.Adam(self.net.last_layer.parameters(),
                                                          lr=self.hparams.last_layer_lr)  # fmt: skip
        if self._last_layer_state is not None:  # loaded now, so that its moments go to the layer's device
            self._last_layer_optimizer.load_state_dict(self._last_layer_state)
            for group in self._last_layer_optimizer.param_groups:  # a resume may set another rate
                group["lr"] = self.hparams.last_layer_lr
            self._last_layer_state = None
        return self._last_layer_optimizer

    def push_prototypes(self, batches: Iterable[dict]) -> PushOutcome:
        """Project every prototype onto its nearest training patch and optimise the last layer
        alone. ``batches``: every training image once, un-augmented (this process's shard under
        DDP), iterable twice (a DataLoader). A collective under DDP: every process calls it."""
        self.check_training_loss()  # the push comes before this batch's own check: no push of a diverged model
        epoch = self.current_epoch
        rank_zero_info(f"push after epoch {epoch}: projecting {self.net.prototype_vectors.shape[0]} prototypes onto "
                       "their nearest training patches, then fitting the last layer")
        was_training = self.training
        self.eval()
        distributed = self.trainer.world_size > 1
        if distributed:
            broadcast_buffers_from_rank0(self.net)
        gather = self.all_gather if distributed else None
        search = search_nearest_patches(self.net, progress(self.trainer, batches, "push 1/4: nearest patches"),
                                        self.device, gather, keep_source_maps=True)  # fmt: skip
        before = self.net.prototype_vectors.detach().clone()
        unchanged = search.project(self.net)
        boxed = before if self.hparams.activation_box == "before" else self.net.prototype_vectors
        activation = self.net.distance_to_similarity(search.activation_maps(boxed))
        similarities, labels = similarity_vectors(self.net, progress(self.trainer, batches, "push 2/4: similarities"),
                                                  self.device, gather)  # fmt: skip
        identity = self.net.prototype_class_identity if self.net.class_specific else None
        loss = fit_last_layer(self.net.last_layer, similarities, labels, self.criterion, self.cost_weights["l1"],
                              identity, self.hparams.last_layer_epochs, self.last_layer_optimizer(),
                              self.hparams.last_layer_batch_size, seed=len(self.push_epochs),
                              progress=lambda passes: progress(self.trainer, passes, "push 3/4: last layer"))  # fmt: skip
        if distributed:
            # Every rank fitted the same layer on the same data in the same order; kernels that are
            # not bitwise deterministic could still let them drift, so rank 0's result is kept.
            weight = self.trainer.strategy.broadcast(self.net.last_layer.weight.detach().cpu(), src=0)
            self.net.last_layer.weight.data.copy_(weight.to(self.device))
        self.push_epochs.append(epoch)
        self.train(was_training)
        result = search.result()
        found = torch.isfinite(result.distance)
        self.log("push/mean_distance", result.distance[found].mean() if found.any() else torch.tensor(0.0),
                 on_step=False, on_epoch=True, sync_dist=False)  # fmt: skip
        self.log("push/last_layer_loss", loss, on_step=False, on_epoch=True)
        rank_zero_info(f"push after epoch {epoch}: {int(found.sum())} prototypes projected"
                       f"{f', {len(unchanged)} without an eligible image' if unchanged else ''}; "
                       f"last layer loss {loss:.4f}")
        return PushOutcome(epoch, result, unchanged, loss, activation)

    # -- checkpoint selection among pushed epochs --------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        report = self.evaluation_report("val")
        if self.trainer.sanity_checking or report is None:
            return
        pushed = bool(self.push_epochs) and self.push_epochs[-1] == self.current_epoch
        scored = [v for v in report.auroc_per_class.values() if v == v]  # NaN: a class that cannot be scored
        macro = sum(scored) / len(scored) if scored else 0.0
        self.log("val/push_auroc", macro if pushed else 0.0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["protopnet_push_epochs"] = list(self.push_epochs)
        checkpoint["protopnet_last_push_epoch"] = self.push_epochs[-1] if self.push_epochs else -1
        state = self._last_layer_state  # not yet loaded into the optimiser: still the latest
        if state is None and self._last_layer_optimizer is not None:
            state = self._last_layer_optimizer.state_dict()
        if state is not None:
            checkpoint["protopnet_last_layer_optimizer"] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.push_epochs = [int(e) for e in checkpoint.get("protopnet_push_epochs", [])]
        self._last_layer_state = checkpoint.get("protopnet_last_layer_optimizer")
