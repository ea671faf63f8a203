"""Checkpoints without pickle, written whole or not at all.

transformers writes the optimizer, scheduler, scaler and RNG state with torch.save (optimizer.pt,
scheduler.pt, scaler.pt, rng_state.pth) and pickles its arguments (training_args.bin). Here every
tensor goes into a safetensors file and the rest of the structure (numbers, strings, nesting)
into its JSON metadata, the arguments are not written at all (config.json holds the settings),
so a run folder never holds a pickle, not even for a moment, and resuming reads nothing that
could run code. Each checkpoint is written into a hidden folder and renamed into place when
complete (core/saving.py), after checking the disk has room for it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from core import saving

log = logging.getLogger("qlora_studio.train")


def save_state(folder: str | Path, name: str, state) -> None:
    """Write `state` (nested dicts/lists/tuples of tensors, arrays and plain values) as NAME.safetensors."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _pack(state, tensors)
    save_file(tensors, str(Path(folder) / f"{name}.safetensors"), metadata={"tree": json.dumps(tree)})


def load_state(folder: str | Path, name: str):
    """Read back what save_state wrote."""
    from safetensors import safe_open

    path = str(Path(folder) / f"{name}.safetensors")
    with safe_open(path, framework="pt") as f:
        tree = json.loads(f.metadata()["tree"])
    return _unpack(tree, load_file(path))


def _pack(value, tensors: dict):
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(value.astype(np.int64) if value.dtype.kind in "iu" else value)
        return {"__ndarray__": key, "dtype": str(value.dtype)}
    if isinstance(value, dict):  # keys keep their type (optimizer state is keyed by int)
        return {"__dict__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_pack(v, tensors) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint without pickle")


def _unpack(tree, tensors: dict):
    if isinstance(tree, list):
        return [_unpack(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__ndarray__" in tree:
        return tensors[tree["__ndarray__"]].numpy().astype(tree["dtype"])
    if "__tuple__" in tree:
        return tuple(_unpack(v, tensors) for v in tree["__tuple__"])
    return {_unpack(k, tensors): _unpack(v, tensors) for k, v in tree["__dict__"]}


def trainer_class():
    """trl's SFTTrainer with its checkpoint state written as safetensors instead of pickles."""
    from trl import SFTTrainer

    class Trainer(SFTTrainer):
        staging: Path | None = None  # while a checkpoint is written: the hidden folder it goes into

        def _save_checkpoint(self, model, trial):
            # transformers writes checkpoint-N file by file into the folder resume looks at: a kill
            # in between left one that looked complete. Write it in a hidden folder, then rename.
            from transformers.trainer_utils import rotate_checkpoints

            root = Path(super()._get_output_dir(trial=trial))
            name = f"checkpoint-{self.state.global_step}"
            main = self.args.should_save  # of a data-parallel run, rank 0 writes all but each rank's RNG state
            saving.ensure_space(root, 3 * self.trainable_bytes())  # weights + two Adam moments
            self.staging = root / ".staging"
            if main:
                shutil.rmtree(self.staging, ignore_errors=True)  # left by a process killed mid-save
            self.accelerator.wait_for_everyone()  # nobody writes into the staging folder before it is clean
            try:
                super()._save_checkpoint(model, trial)  # writes .staging/checkpoint-N (see _get_output_dir)
                self.accelerator.wait_for_everyone()  # every rank's part is in
                if main:
                    saving.publish(self.staging / name, root / name)
            except Exception as e:
                if saving.is_disk_full(e):
                    raise saving.disk_error(e, name, saving.RESUME_HINT) from e
                raise
            finally:
                if main:
                    shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
            if not main:
                return
            # Rotation ran inside the staging folder (a no-op there); run it where the checkpoints live.
            # By step, not mtime: a resume removes newer broken checkpoints, so the highest step is the newest.
            rotate_checkpoints(output_dir=str(root), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)

        def _get_output_dir(self, trial):
            return str(self.staging) if self.staging else super()._get_output_dir(trial)

        def _save(self, output_dir=None, state_dict=None):
            # transformers' own _save ends with torch.save(self.args, "training_args.bin"): a pickle,
            # never read back here. A LoRA model on one process needs only these two writes.
            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            self.accelerator.unwrap_model(self.model, keep_torch_compile=False).save_pretrained(
                output_dir, state_dict=state_dict, safe_serialization=True)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

        def trainable_bytes(self) -> int:
            """Size of the trainable weights in float32: what one copy of the adapter takes on disk."""
            return 4 * sum(p.numel() for p in self.model.parameters() if p.requires_grad)

        def _save_optimizer_and_scheduler(self, output_dir):
            if not self.args.should_save:  # the same on every rank of a data-parallel run: rank 0 writes it
                return
            try:
                save_state(output_dir, "optimizer", self.optimizer.state_dict())
                save_state(output_dir, "scheduler", self.lr_scheduler.state_dict())
            except TypeError as e:  # an optimizer with exotic state: a resumable run beats a crash
                log.warning("%s; this checkpoint keeps the optimizer state as optimizer.pt", e)
                super()._save_optimizer_and_scheduler(output_dir)

        def _load_optimizer_and_scheduler(self, checkpoint):
            if checkpoint and (Path(checkpoint) / "optimizer.safetensors").is_file():
                self.optimizer.load_state_dict(load_state(checkpoint, "optimizer"))
                self.lr_scheduler.load_state_dict(load_state(checkpoint, "scheduler"))
            else:
                super()._load_optimizer_and_scheduler(checkpoint)

        def _save_scaler(self, output_dir):
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None and self.args.should_save:
                save_state(output_dir, "scaler", scaler.state_dict())

        def _load_scaler(self, checkpoint):
            scaler = getattr(self.accelerator, "scaler", None)
            if checkpoint and scaler is not None and (Path(checkpoint) / "scaler.safetensors").is_file():
                scaler.load_state_dict(load_state(checkpoint, "scaler"))

        def _save_rng_state(self, output_dir):
            state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
            if torch.cuda.is_available():
                state["cuda"] = torch.cuda.random.get_rng_state_all()
            save_state(output_dir, self._rng_name(), state)

        def _rng_name(self) -> str:
            # One RNG state per rank of a data-parallel run (each draws its own dropout masks).
            return "rng_state" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}"

        def _load_rng_state(self, checkpoint):
            if not checkpoint or not (Path(checkpoint) / f"{self._rng_name()}.safetensors").is_file():
                return
            state = load_state(checkpoint, self._rng_name())
            random.setstate(state["python"])
            np.random.set_state(state["numpy"])
            torch.random.set_rng_state(state["cpu"])
            if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
                torch.cuda.random.set_rng_state_all(state["cuda"])

    return Trainer
