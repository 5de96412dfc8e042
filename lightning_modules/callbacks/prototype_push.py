"""ProtoPNet's push (prototype projection) as a Lightning callback.

On push epochs, after the epoch's last training batch (so the epoch's validation and checkpoint
see the pushed model):

1. one pass over the un-augmented training set: every prototype's nearest latent patch among
   images of its own class, all prototypes at once (``PushSearch``), the running minima reduced
   across processes under DDP;
2. projection: each prototype becomes that patch;
3. last-layer-only optimisation (convex): the network below the last layer is now fixed, so the
   training images' similarity vectors are computed once and the last layer is fitted on them
   with Adam, cross-entropy + L1 on wrong-class connections (``last_layer_epochs`` passes);
4. for every prototype: source image, patch location, distance, receptive-field box and the box
   of the top 5 % of its upsampled activation, in ``<run>/prototypes/epochNNN/prototypes.json``,
   with three pictures per prototype beside it and a W&B panel.

The push record is the callback's state, so it lives in checkpoints and a resumed run keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, DistributedSampler

from lightning_modules.analysis.prototype_pictures import activation_box, prototype_pictures, upsample_map
from lightning_modules.analysis.push import PushSearch
from lightning_modules.atomic_io import write_json, write_png
from lightning_modules.callbacks.attention_maps import denormalise
from lightning_modules.callbacks.image_logging import log_images
from lightning_modules.losses import last_layer_l1
from lightning_modules.receptive_field import cell_box


class PrototypePush(L.Callback):
    uses_run_dir = True  # the CLI sets ``dirpath`` to the run folder when the config leaves it empty

    def __init__(self, push_start: int = 10, push_every: int = 10, push_at_end: bool = True,
                 last_layer_epochs: int = 20, last_layer_lr: float = 1e-4, last_layer_batch_size: int = 256,
                 dirpath: Optional[str] = None, pictures: bool = True, activation_percentile: float = 95.0):
        """
        Args:
            push_start, push_every: push after epochs push_start, push_start + push_every, ...
                (counted from 1, as in the paper: "push at epoch 10 and every 10 epochs").
            push_at_end: also push after the final epoch, so the final model's prototypes are
                training patches.
            last_layer_epochs, last_layer_lr: the last-layer-only optimisation after each push.
            dirpath: the run folder (pictures and records go to ``<dirpath>/prototypes/``).
        """
        self.push_start, self.push_every, self.push_at_end = push_start, push_every, push_at_end
        self.last_layer_epochs, self.last_layer_lr = last_layer_epochs, last_layer_lr
        self.last_layer_batch_size = last_layer_batch_size
        self.dirpath, self.pictures, self.activation_percentile = dirpath, pictures, activation_percentile
        self.pushes: list[int] = []
        self.records: list[dict[str, Any]] = []

    # -- when -----------------------------------------------------------------------------------
    def is_push_epoch(self, epoch: int, max_epochs: int) -> bool:
        count = epoch + 1
        scheduled = count >= self.push_start and (count - self.push_start) % self.push_every == 0
        return scheduled or (self.push_at_end and epoch == max_epochs - 1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        last = batch_idx == trainer.num_training_batches - 1
        if last and self.is_push_epoch(trainer.current_epoch, trainer.max_epochs):
            self.push(trainer, pl_module)

    # -- what -----------------------------------------------------------------------------------
    def _loader(self, trainer: L.Trainer) -> DataLoader:
        """Every training image once, un-augmented; sharded across processes under DDP."""
        loader = trainer.datamodule.eval_dataloader("train")
        if trainer.world_size > 1:
            sampler = DistributedSampler(loader.dataset, num_replicas=trainer.world_size,
                                         rank=trainer.global_rank, shuffle=False)
            loader = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                                num_workers=loader.num_workers)
        return loader

    @torch.no_grad()
    def _search(self, trainer, pl_module, loader) -> PushSearch:
        net = pl_module.net
        search = PushSearch.for_net(net).to(pl_module.device)
        for batch in loader:
            out = net(batch["image"].to(pl_module.device))
            search.update(out.distances, out.features, batch["label"].to(pl_module.device),
                          batch["index"].to(pl_module.device))
        if trainer.world_size > 1:
            search.reduce(pl_module.all_gather)
        return search

    @torch.no_grad()
    def _similarities(self, trainer, pl_module, loader) -> tuple[torch.Tensor, torch.Tensor]:
        sims, labels, index = [], [], []
        for batch in loader:
            out = pl_module.net(batch["image"].to(pl_module.device))
            sims.append(pl_module.net.distance_to_similarity(out.min_distances))
            labels.append(batch["label"].to(pl_module.device))
            index.append(batch["index"].to(pl_module.device))
        sims, labels, index = torch.cat(sims), torch.cat(labels), torch.cat(index)
        if trainer.world_size > 1:
            sims, labels, index = (pl_module.all_gather(t).flatten(0, 1) for t in (sims, labels, index))
        order = torch.argsort(index)  # same order on every process: identical last layers
        keep = torch.ones_like(order, dtype=torch.bool)
        keep[1:] = index[order][1:] != index[order][:-1]
        return sims[order][keep], labels[order][keep]

    def optimise_last_layer(self, pl_module, similarities: torch.Tensor, labels: torch.Tensor) -> float:
        net = pl_module.net
        layer = net.last_layer
        identity = net.prototype_class_identity if pl_module.hparams.class_specific else None
        l1 = pl_module.cost_weights["l1"]
        layer.weight.requires_grad_(True)
        optimizer = torch.optim.Adam(layer.parameters(), lr=self.last_layer_lr)
        generator = torch.Generator(device="cpu").manual_seed(len(self.pushes))
        loss = torch.zeros(())
        with torch.enable_grad():
            for _ in range(self.last_layer_epochs):
                order = torch.randperm(len(labels), generator=generator).to(labels.device)
                for chunk in order.split(self.last_layer_batch_size):
                    logits = layer(similarities[chunk])
                    loss = pl_module.criterion(logits, labels[chunk]) + l1 * last_layer_l1(layer.weight, identity)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        layer.weight.requires_grad_(False)
        return float(loss)

    def push(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        was_training = pl_module.training
        pl_module.eval()
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            # DDP broadcasts buffers (BatchNorm statistics) from rank 0 at the start of every training
            # forward, after which each rank's step updated its own copy. The push runs the bare
            # network, so it syncs them itself: every rank must compute the same features, or a
            # patch found on rank 1 is not at distance 0 in rank 0's checkpoint.
            for buffer in pl_module.net.buffers():
                torch.distributed.broadcast(buffer.data, src=0)
        loader = self._loader(trainer)
        search = self._search(trainer, pl_module, loader)
        unchanged = search.project(pl_module.net)
        similarities, labels = self._similarities(trainer, pl_module, loader)
        last_loss = self.optimise_last_layer(pl_module, similarities, labels)
        if trainer.world_size > 1:
            # Every rank fitted the same layer on the same data in the same order; kernels that are
            # not bitwise deterministic could still let them drift, so rank 0's result is kept.
            weight = trainer.strategy.broadcast(pl_module.net.last_layer.weight.detach().cpu(), src=0)
            pl_module.net.last_layer.weight.data.copy_(weight.to(pl_module.device))
        self.records = self._describe(trainer, pl_module, search)
        self.pushes.append(epoch)
        pl_module.last_push_epoch = epoch
        pl_module.train(was_training)
        distances = search.result().distance
        found = torch.isfinite(distances)
        pl_module.log("push/mean_distance", distances[found].mean() if found.any() else torch.tensor(0.0),
                      on_step=False, on_epoch=True, sync_dist=False)  # fmt: skip
        pl_module.log("push/last_layer_loss", last_loss, on_step=False, on_epoch=True)
        rank_zero_info(f"push after epoch {epoch}: {int(found.sum())} prototypes projected"
                       f"{f', {len(unchanged)} without an eligible image' if unchanged else ''}; "
                       f"last layer loss {last_loss:.4f}")
        if trainer.is_global_zero and self.dirpath:
            self._save(trainer, pl_module, epoch)

    # -- the record and the pictures ------------------------------------------------------------
    @torch.no_grad()
    def _describe(self, trainer, pl_module, search: PushSearch) -> list[dict[str, Any]]:
        result = search.result()
        datamodule = trainer.datamodule
        records = datamodule.records("train")
        size = int(datamodule.hparams.image_size)
        rf = pl_module.net.receptive_field(size)
        classes = pl_module.net.prototype_classes.tolist()
        out = []
        for j in range(len(classes)):
            i = int(result.image_index[j])
            entry: dict[str, Any] = {"prototype": j, "class": pl_module.class_names[classes[j]],
                                     "distance": float(result.distance[j])}  # fmt: skip
            if i >= 0:
                h, w = int(result.h[j]), int(result.w[j])
                entry.update(image_index=i, image_id=records[i].image_id, image_path=str(records[i].image_path),
                             image_class=pl_module.class_names[records[i].label], cell=[h, w],
                             receptive_field_box=list(cell_box(rf, h, w)))  # fmt: skip
            out.append(entry)
        if trainer.is_global_zero:  # the boxes serve the pictures and the checkpoint: rank 0's job
            self._add_activation_boxes(trainer, pl_module, out)
        return out

    @torch.no_grad()
    def _add_activation_boxes(self, trainer, pl_module, entries: list[dict]) -> None:
        """The top-percentile box of each prototype's similarity map on its source image
        (one forward pass per distinct source image)."""
        dataset = trainer.datamodule.eval_dataloader("train").dataset
        by_image: dict[int, list[dict]] = {}
        for entry in entries:
            if "image_index" in entry:
                by_image.setdefault(entry["image_index"], []).append(entry)
        for i, group in by_image.items():
            image = dataset[i]["image"][None].to(pl_module.device)
            distances = pl_module.net(image).distances[0]
            for entry in group:
                similarity = pl_module.net.distance_to_similarity(distances[entry["prototype"]])
                activation = upsample_map(similarity, tuple(image.shape[-2:]))
                entry["activation_box"] = list(activation_box(activation, self.activation_percentile))
                entry["_activation"] = activation  # for the pictures; not stored

    def _save(self, trainer, pl_module, epoch: int) -> None:
        folder = Path(self.dirpath) / "prototypes" / f"epoch{epoch:03d}"
        dataset = trainer.datamodule.eval_dataloader("train").dataset
        hp = trainer.datamodule.hparams
        panel, captions = [], []
        for entry in self.records:
            activation = entry.pop("_activation", None)
            if activation is None or not self.pictures:
                continue
            image = denormalise(dataset[entry["image_index"]]["image"][None], hp.normalize_mean, hp.normalize_std)[0]
            pictures = prototype_pictures(image, activation, entry["receptive_field_box"], entry["activation_box"])
            for kind, picture in pictures.items():
                write_png(folder / f"prototype{entry['prototype']:04d}_{kind}.png", picture)
            panel.append(pictures["boxes"])
            captions.append(f"p{entry['prototype']} {entry['class']} <- {entry['image_id']} d={entry['distance']:.3f}")
        write_json(folder / "prototypes.json", {"epoch": epoch, "prototypes": self.records})
        if panel:
            log_images(trainer, "prototypes", panel, captions)

    # -- checkpoint state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"pushes": list(self.pushes),
                "records": [{k: v for k, v in r.items() if not k.startswith("_")} for r in self.records]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pushes = list(state_dict.get("pushes", []))
        self.records = list(state_dict.get("records", []))
