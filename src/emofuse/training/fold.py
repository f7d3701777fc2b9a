"""One fold of an experiment: trained with Lightning and tested once (the run over every fold
is training/run.py).

Per fold (`train_fold`):
  1. the acoustic normaliser (and a vocabulary for token-id models) is fitted on the
     training part only and saved in `fold-K/normaliser.json` with the label set and the
     feature settings, so a fold can later be packaged as a model directory;
  2. Lightning trains with the configured optimiser, gradient-norm clipping, early stopping
     and best-checkpoint selection on `val_ua` of the validation speakers (carved from the
     training part by the protocol; the test part is never looked at while training);
  3. the best checkpoint is evaluated ONCE on the test part, in a plain single-process pass
     over the whole part (under DDP every rank runs the same pass and rank 0 writes), giving
     `fold-K/metrics.json` and `fold-K/predictions.csv`. With `protocol.backend`, a logistic
     regression refitted on the network's utterance vectors (`training/refit_output.py`,
     `fold-K/backend.json`) gives the test predictions; the network's own metrics are kept.

A fitted model (`ModelEntry.fitted`: the linear probe, models/linear_probe.py) has nothing to
train: `fit_fold` takes the place of steps 2 and 3, fitting its logistic back-end on the
training part with C chosen on the validation speakers, and writes the same fold files less
the checkpoints.

Resume: a fold whose `metrics.json` exists is done and skipped; an unfinished fold restarts
from `fold-K/checkpoints/last.ckpt` at the epoch after the last finished one. Checkpoints
are written to a temporary file and moved into place (`AtomicCheckpointIO`), so a kill
during a save leaves the previous good checkpoint intact.

Fold directory:
    run_dir/fold-K/                checkpoints/{best-*.ckpt,last.ckpt}, logs/{csv,tensorboard}/,
                                   normaliser.json, split.json, metrics.json, predictions.csv
"""

from __future__ import annotations

import copy
import csv
import io
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from emofuse.errors import ConfigError, EmofuseError
from emofuse.models.base import InputSpec, get_model
from emofuse.training.augment import FrameMasking
from emofuse.models.refitted_output import Backend
from emofuse.training.refit_output import CS, fit_backend, utterance_vectors
from emofuse.models.modeldir import best_checkpoint_of
from emofuse.training.checkpoints import checkpoint_state, load_weights, read_checkpoint, state_of
from emofuse.io import atomic_open, atomic_write_text
from emofuse.training.config import ExperimentConfig
from emofuse.features.normalise import Normalisation
from emofuse.training.data import (
    BucketBatchSampler, Collator, IndexDataset, LabelledData, class_weights, lengths_of,
)
from emofuse.training.integrity import check_teacher_split
from emofuse.training.metrics import classification_metrics
from emofuse.training.module import EmotionModule, predict
from emofuse.training.report import read_json, write_json

Log = Callable[[str], None]



class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, fsync, then os.replace.

    A process killed mid-save leaves only a stray `.name.*.tmp` file; the checkpoint the
    name pointed to before is untouched.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_open(path, "wb") as out:
            torch.save(checkpoint, out)


class FoldDataModule(L.LightningDataModule):
    """Train / validation loaders of one fold. Training batches are length-bucketed and
    sharded over DDP ranks; the validation part is NOT sharded (every rank sees all of it)."""

    def __init__(self, cfg: ExperimentConfig, collator: Collator, train_idx: np.ndarray, val_idx: np.ndarray,
                 fold_index: int = 0):
        super().__init__()
        self.cfg = cfg
        self.collator = collator
        self.fold_index = fold_index
        self.train_idx = np.asarray(train_idx)
        self.val_idx = np.asarray(val_idx)

    def _loader(self, indices: np.ndarray, shuffle: bool, batch_size: int, replicas: int = 1, rank: int = 0):
        d = self.cfg.data
        lengths = lengths_of(self.collator.data, indices, d.max_frames, d.max_words)
        sampler = BucketBatchSampler(lengths, batch_size, shuffle=shuffle, seed=self.cfg.seed,
                                     chunk=self.cfg.trainer.bucket_chunk, num_replicas=replicas, rank=rank)
        collator = self.collator
        if shuffle and self.cfg.augment.active:  # the training loader only
            collator = collator.with_augment(FrameMasking(self.cfg.augment, [self.cfg.seed, self.fold_index, rank]))
        return DataLoader(IndexDataset(indices), batch_sampler=sampler, collate_fn=collator,
                          num_workers=d.loader_workers, persistent_workers=d.loader_workers > 0)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        return batch.to(device)

    def train_dataloader(self):
        world = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        return self._loader(self.train_idx, True, self.cfg.trainer.batch_size, world, rank)

    def val_dataloader(self):
        return self._loader(self.val_idx, False, self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size)


def eval_loader(cfg: ExperimentConfig, collator: Collator, indices) -> DataLoader:
    lengths = lengths_of(collator.data, indices, cfg.data.max_frames, cfg.data.max_words)
    sampler = BucketBatchSampler(lengths, cfg.trainer.eval_batch_size or cfg.trainer.batch_size, shuffle=False)
    return DataLoader(IndexDataset(indices), batch_sampler=sampler, collate_fn=collator)



def fold_inputs(cfg: ExperimentConfig, data: LabelledData, train_idx) -> tuple[dict, Any, Any]:
    """InputSpec sizes, the fitted normaliser and vocabulary (training part only)."""
    needs = get_model(cfg.model_name).needs
    first = data.items[0]
    if "acoustic" in needs and first.acoustic is None:
        raise EmofuseError(f"model {cfg.model_name!r} reads acoustic frames but the features have none "
                           f"(data.acoustic={cfg.data.acoustic!r})")
    if "words" in needs and first.word_vectors is None:
        raise EmofuseError(f"model {cfg.model_name!r} reads word vectors but the features have none "
                           f"(data.words={cfg.data.words!r})")
    if "word_frames" in needs and first.word_times is None:
        raise EmofuseError(f"model {cfg.model_name!r} needs word times but the features have none "
                           f"(data.align={cfg.data.align!r})")
    train_items = [data.items[int(i)] for i in train_idx]
    normaliser = Normalisation.fit(cfg.data.normalise, data.items, [u.speaker for u in data.corpus], train_idx)
    vocab = None
    if "token_ids" in needs:
        from emofuse.features.vocab import Vocabulary

        vocab = Vocabulary.build([list(it.words or []) for it in train_items])
    spec = {
        "num_classes": len(data.classes),
        "acoustic_dim": int(first.acoustic.shape[1]) if first.acoustic is not None else 0,
        "word_dim": int(first.word_vectors.shape[1]) if first.word_vectors is not None else 0,
        "vocab_size": len(vocab) if vocab is not None else 0,
    }
    if first.acoustic is not None:
        from emofuse.features.frames import frame_layers

        layers = frame_layers(cfg.data.acoustic)  # hf:...#layers=all: summed by models.base.LayerWeighted
        if layers > 1:
            spec["acoustic_layers"] = layers
    if cfg.model.get("finetune_words") and (cfg.data.words or "").startswith("hf:"):
        spec["word_encoder"] = cfg.data.words  # fine-tuned with the model (models.aguilar2019.LexicalEncoder)
    return spec, normaliser, vocab


@dataclass
class Stage:
    """What one training run of a fold left: the module and collator it trained with, and the
    checkpoint to test (the best epoch on validation, or the last epoch of a refit)."""

    module: EmotionModule
    collator: Collator
    best_path: Path
    marker: dict


def train_fold(cfg: ExperimentConfig, data: LabelledData, fold, fold_dir: Path, log: Log = print,
               extra_callbacks: tuple = ()) -> dict:
    """Train one fold (resuming from its last checkpoint), test its best checkpoint once.

    With `protocol.refit`, a selection run on the training part picks the number of epochs on
    the validation speakers (`fold-K/selection/`); then a fresh network is trained on the
    training and validation speakers together for exactly that many epochs (`fold-K/`, so
    export and resume read it as any fold), and that network is tested. The test part is
    never looked at before the one test pass.
    """
    if len(fold.val) == 0:
        raise ConfigError(f"fold {fold.index} has no validation part: model selection needs validation speakers "
                          "(set protocol.val_fraction or protocol.val_speakers)")
    if len(fold.test) == 0:
        raise ConfigError(f"fold {fold.index} has no test part")
    check_teacher_split(cfg, data, fold)
    if get_model(cfg.model_name).fitted:
        return fit_fold(cfg, data, fold, fold_dir, log)
    started = time.time()
    fold_dir.mkdir(parents=True, exist_ok=True)
    refit = None
    if cfg.protocol.refit:
        selection = _fit(cfg, data, fold, fold.train, fold.val, fold_dir / "selection", log, extra_callbacks)
        epochs = int(read_checkpoint(selection.best_path).get("epoch", 0)) + 1
        refit_cfg = copy.deepcopy(cfg)
        refit_cfg.trainer.max_epochs = refit_cfg.trainer.min_epochs = epochs
        refit = {"epochs": epochs, "selection_val_score": selection.marker.get("best_score"),
                 "selection_epochs_run": selection.marker.get("epochs_run")}
        stage = _fit(refit_cfg, data, fold, training_part(cfg, fold), None, fold_dir, log, extra_callbacks)
    else:
        stage = _fit(cfg, data, fold, fold.train, fold.val, fold_dir, log, extra_callbacks)
    module, collator, best_path, marker = stage.module, stage.collator, stage.best_path, stage.marker
    monitor = cfg.trainer.monitor

    # The test part, once, with the best checkpoint: a plain pass over the whole part.
    state = read_checkpoint(best_path)
    load_weights(module, state_of(state, best_path), best_path, f"model {cfg.model_name!r}")
    device = _eval_device(cfg)
    module.to(device)
    ids, labels, probs = predict(module.model, eval_loader(cfg, collator, fold.test), device)
    backend = None
    if cfg.protocol.backend:  # the refitted output layer's predictions are the fold's (training/refit_output.py)
        network_metrics = classification_metrics(labels, probs.argmax(1), data.classes)
        backend, probs = fold_backend(cfg, data, fold, module.model, collator, device, ids)
        if rank_zero_only.rank == 0:
            write_json(fold_dir / "backend.json", backend.to_dict())
    preds = probs.argmax(1)
    metrics = classification_metrics(labels, preds, data.classes)
    result = {
        "fold": fold.index,
        "name": fold.name,
        "n_train": int(len(fold.train)), "n_val": int(len(fold.val)), "n_test": int(len(fold.test)),
        "best_epoch": int(state.get("epoch", -1)),
        "epochs_run": marker.get("epochs_run"),
        "monitor": monitor,
        "val_score": refit["selection_val_score"] if refit else marker.get("best_score"),
        "best_checkpoint": os.path.relpath(best_path, fold_dir),
        "test": metrics,
        "seconds": round(time.time() - started, 2),
    }
    if refit:
        result["refit"] = refit
    from emofuse.models.base import layer_weights_of

    shares = layer_weights_of(module.model)  # hf:...#layers=all: each layer's learned share
    if shares is not None:
        result["layer_weights"] = [round(w, 6) for w in shares]
    if backend is not None:
        result["backend"] = {"kind": backend.kind, "C": backend.C, "val_ua": round(backend.val_ua, 4)}
        result["network_test"] = network_metrics
    if rank_zero_only.rank == 0:
        write_predictions(fold_dir / "predictions.csv", data, ids, labels, probs)
        write_json(fold_dir / "metrics.json", result)  # last: its presence marks the fold done
    barrier()
    return result


# What a fitted model's back-end z-scores its utterance vectors with, per data.normalise
# (models/linear_probe.py): each speaker's own statistics, or the training part's.
FITTED_BACKENDS = {"speaker": "speaker-lr", "fold": "lr"}


def fit_fold(cfg: ExperimentConfig, data: LabelledData, fold, fold_dir: Path, log: Log = print) -> dict:
    """A fitted model's fold (`ModelEntry.fitted`, the linear probe): no Lightning, no epochs.

    The network (no trained weights) gives every utterance's vector; a logistic back-end is
    fitted on the training part's, C chosen on the validation speakers' (`fold_backend`), and
    it predicts the test part once. The fold folder holds what a trained fold's does, less
    the checkpoints: normaliser.json (the frames are not z-scored: the back-end z-scores the
    vectors as data.normalise says), split.json, backend.json, predictions.csv, metrics.json
    (last: its presence marks the fold done). trainer.* and optim.* are not read."""
    started = time.time()
    fold_dir.mkdir(parents=True, exist_ok=True)
    kind = FITTED_BACKENDS[Normalisation.mode_of(cfg.data.normalise)]  # validated in training.config
    spec, _, _ = fold_inputs(cfg, data, fold.train)
    frames = Normalisation("none", frames=data.items[0].acoustic is not None)
    model = get_model(cfg.model_name).build(InputSpec(**spec), **cfg.model_settings).eval()
    if rank_zero_only.rank == 0:
        write_json(fold_dir / "normaliser.json", {
            "label_set": cfg.data.label_set,
            "classes": list(data.classes),
            "features": {k: getattr(cfg.data, k) for k in ("acoustic", "words", "align", "max_frames", "max_words", "trim")},
            "model": cfg.model,
            "spec": spec,
            "normaliser": frames.to_dict(),
            "vocabulary": None,
            "fitted_on": f"nothing: frames as extracted; the back-end ({kind}) z-scores the pooled vectors",
        })
        write_json(fold_dir / "split.json", {**fold.to_json(data.corpus), "classes": list(data.classes)})
    collator = Collator(data, frames, cfg.data.max_frames, cfg.data.max_words)
    test_ids = [data.items[int(i)].id for i in fold.test]
    backend, probs = fold_backend(cfg, data, fold, model, collator, "cpu", test_ids, kind, tuple(model.cfg.cs))
    labels = data.labels[np.asarray(fold.test, dtype=np.int64)]
    result = {
        "fold": fold.index,
        "name": fold.name,
        "n_train": int(len(fold.train)), "n_val": int(len(fold.val)), "n_test": int(len(fold.test)),
        "best_epoch": None,  # fitted, not trained
        "epochs_run": 0,
        "monitor": "val_ua",  # the back-end's, on which C was chosen
        "val_score": round(backend.val_ua, 6),
        "best_checkpoint": None,
        "test": classification_metrics(labels, probs.argmax(1), data.classes),
        "seconds": round(time.time() - started, 2),
        "backend": {"kind": backend.kind, "C": backend.C, "val_ua": round(backend.val_ua, 4)},
    }
    if rank_zero_only.rank == 0:
        write_json(fold_dir / "backend.json", backend.to_dict())
        write_predictions(fold_dir / "predictions.csv", data, test_ids, labels, probs)
        write_json(fold_dir / "metrics.json", result)  # last: its presence marks the fold done
    barrier()
    return result


def fold_backend(cfg: ExperimentConfig, data: LabelledData, fold, model: torch.nn.Module, collator: Collator,
                 device, test_ids: list[str], kind: str | None = None, cs: tuple[float, ...] = CS
                 ) -> tuple[Backend, np.ndarray]:
    """Fit a back-end of `kind` (default `protocol.backend`) on the utterance vectors of the
    fold's network (training part; C from `cs` on the validation speakers); return it and its
    class probabilities for `test_ids`, in that order."""
    everything = np.unique(np.concatenate([fold.train, fold.val, fold.test])).astype(int)
    ids, x = utterance_vectors(model, eval_loader(cfg, collator, everything), device)  # loader order
    index = {data.items[i].id: int(i) for i in everything}
    rows = [index[uid] for uid in ids]  # the data index of each vector
    where = {i: r for r, i in enumerate(rows)}
    speakers = [data.corpus[i].speaker for i in rows]
    backend = fit_backend(kind or cfg.protocol.backend, x, data.labels[rows], speakers,
                          [where[int(i)] for i in fold.train], [where[int(i)] for i in fold.val], list(data.classes),
                          cs)
    probs = backend.probabilities(x, speakers)
    return backend, probs[[where[index[uid]] for uid in test_ids]]


def training_part(cfg: ExperimentConfig, fold) -> np.ndarray:
    """The utterances the tested network of a fold was trained on: the training part, or the
    training and validation parts together with `protocol.refit`."""
    return np.concatenate([fold.train, fold.val]) if cfg.protocol.refit else np.asarray(fold.train)


def _fit(cfg: ExperimentConfig, data: LabelledData, fold, train_idx, val_idx, stage_dir: Path, log: Log,
         extra_callbacks: tuple) -> Stage:
    """One training run in `stage_dir` (resumable). With validation indices: early stopping and
    the best epoch on the monitor; without (a refit): exactly max_epochs, the last one kept."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    stage_dir.mkdir(parents=True, exist_ok=True)
    selecting = val_idx is not None
    spec, normaliser, vocab = fold_inputs(cfg, data, train_idx)
    weights = class_weights(data.class_counts(train_idx)).tolist() if cfg.optim.class_weights else None
    if rank_zero_only.rank == 0:
        part = "training part of this fold" if selecting else "training and validation parts of this fold (refit)"
        write_json(stage_dir / "normaliser.json", {
            "label_set": cfg.data.label_set,
            "classes": list(data.classes),
            "features": {k: getattr(cfg.data, k) for k in ("acoustic", "words", "align", "asr", "max_frames", "max_words", "trim")},
            "model": cfg.model,
            "spec": spec,
            "normaliser": normaliser.to_dict(),
            "vocabulary": vocab.to_dict() if vocab is not None else None,
            "fitted_on": normaliser.fitted_on(part),
        })
        write_json(stage_dir / "split.json", {**fold.to_json(data.corpus), "classes": list(data.classes)})
    collator = Collator(data, normaliser, cfg.data.max_frames, cfg.data.max_words, vocab)
    module = EmotionModule(cfg.model_name, cfg.model_settings, spec, asdict(cfg.optim), list(data.classes), weights)

    ckpt_dir = stage_dir / "checkpoints"
    # Every epoch's state in last.ckpt for resume (Lightning's save_last only writes when the
    # best one changes); when selecting, the best epoch on the validation monitor too (val UA
    # by default; first of equals).
    monitor, mode = cfg.trainer.monitor, "min" if cfg.trainer.monitor == "val_loss" else "max"
    last_checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                      enable_version_counter=False)
    callbacks: list = [last_checkpoint, *extra_callbacks]
    checkpoint = None
    if selecting:
        checkpoint = ModelCheckpoint(
            dirpath=ckpt_dir, filename="best-epoch{epoch:02d}", auto_insert_metric_name=False,
            monitor=monitor, mode=mode, save_top_k=1, save_last=False, enable_version_counter=False,
        )
        callbacks.insert(0, checkpoint)
        if cfg.trainer.patience:
            callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.trainer.patience))
    if cfg.trainer.ema:
        # Validation sees the averaged weights and every checkpoint's state_dict holds them (the
        # raw weights ride along for resume), so selection, test and export read one network.
        callbacks.append(EMAWeightAveraging(decay=cfg.trainer.ema))
    if cfg.trainer.progress:
        callbacks.append(RichProgressBar(leave=True))
    loggers = [CSVLogger(stage_dir / "logs", name="csv"), TensorBoardLogger(stage_dir / "logs", name="tensorboard")]
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs, min_epochs=cfg.trainer.min_epochs,
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy, precision=cfg.trainer.precision,
        gradient_clip_val=cfg.optim.grad_clip, gradient_clip_algorithm="norm",
        callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()],
        deterministic="warn" if cfg.trainer.deterministic else False,
        use_distributed_sampler=False,  # our bucket sampler shards itself
        enable_progress_bar=cfg.trainer.progress, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=cfg.trainer.log_every_n_steps,
        limit_val_batches=None if selecting else 0,
        default_root_dir=stage_dir,
    )
    trained_marker = stage_dir / "trained.json"
    if trained_marker.is_file():
        best_path = best_checkpoint_of(trained_marker)
        log(f"fold {fold.index}: training in {stage_dir} had finished; using {best_path.name}")
    else:
        last = ckpt_dir / "last.ckpt"
        resume = str(last) if last.is_file() else None
        if resume:
            epoch = int(read_checkpoint(last).get("epoch", -1))  # refuses a crafted file before Lightning reads it
            log(f"fold {fold.index}: resuming from {last} ({epoch + 1} epoch(s) done)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            for noise in (".*sync_dist=True.*", ".*log_every_n_steps.*", ".*LeafSpec.*", ".*exists and is not empty.*"):
                warnings.filterwarnings("ignore", message=noise)
            try:
                data_module = FoldDataModule(cfg, collator, train_idx, val_idx if selecting else train_idx[:0], fold.index)
                trainer.fit(module, datamodule=data_module, ckpt_path=resume, weights_only=True)
            except SystemExit:  # Lightning turns Ctrl-C into sys.exit(1) after a graceful shutdown
                if trainer.state.status == TrainerStatus.INTERRUPTED:
                    raise KeyboardInterrupt from None
                raise
        if trainer.state.status == TrainerStatus.INTERRUPTED or trainer.interrupted:
            raise KeyboardInterrupt
        if checkpoint is not None and checkpoint.best_model_path:
            best_path = Path(checkpoint.best_model_path)
        else:
            best_path = ckpt_dir / "last.ckpt"
        if rank_zero_only.rank == 0:
            write_json(trained_marker, {"best_checkpoint": os.path.relpath(best_path, stage_dir),
                                        "epochs_run": trainer.current_epoch,
                                        "monitor": monitor if selecting else None,
                                        "best_score": _float(checkpoint.best_model_score) if checkpoint else None})
        barrier()
    return Stage(module, collator, best_path, read_json(trained_marker) if trained_marker.is_file() else {})


def load_fold_model(cfg: ExperimentConfig, data: LabelledData, fold, fold_dir: Path) -> tuple[torch.nn.Module, Collator]:
    """A finished fold's best network (eval mode, on the CPU) and the collator it was tested with
    (the fold's normaliser and vocabulary, fitted again as `train_fold` fitted them).

    For analyses of trained folds (benchmarks): the checkpoint named in the fold's
    `metrics.json`; only the network's weights (`model.*`) are read, not the module's other
    buffers such as class weights."""
    marker = fold_dir / "metrics.json"
    if not marker.is_file():
        raise EmofuseError(f"{marker}: no such file; fold {fold.index} has not finished (train it first)")
    path = best_checkpoint_of(marker)
    spec, normaliser, vocab = fold_inputs(cfg, data, training_part(cfg, fold))
    collator = Collator(data, normaliser, cfg.data.max_frames, cfg.data.max_words, vocab)
    module = EmotionModule(cfg.model_name, cfg.model_settings, spec, asdict(cfg.optim), list(data.classes))
    state = checkpoint_state(path)  # one DataError for a missing, damaged or crafted file
    load_weights(module.model, {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}, path,
                 f"model {cfg.model_name!r}")
    return module.model.eval(), collator


def write_predictions(path: Path, data: LabelledData, ids, labels, probs) -> None:
    speaker = {u.id: u.speaker for u in data.corpus}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "speaker", "label", "prediction", *[f"p_{c}" for c in data.classes]])
    for uid, y, p in zip(ids, labels, probs):
        writer.writerow([uid, speaker.get(uid, ""), data.classes[int(y)], data.classes[int(p.argmax())],
                         *[f"{v:.6f}" for v in p]])
    atomic_write_text(path, buffer.getvalue())


def _float(value) -> float | None:
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _eval_device(cfg: ExperimentConfig) -> torch.device:
    if cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")

