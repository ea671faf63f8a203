"""Checkpoints without pickle: the trainer's optimizer, scheduler, grad-scaler and RNG state as safetensors.

transformers writes these with torch.save (optimizer.pt, scheduler.pt, scaler.pt, rng_state.pth).
Here every tensor goes into a safetensors file and the rest of the structure (numbers, strings,
nesting) into its JSON metadata, so a run folder never holds a pickle, and resuming reads
nothing that could run code.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

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
        def _save_optimizer_and_scheduler(self, output_dir):
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
            if scaler is not None:
                save_state(output_dir, "scaler", scaler.state_dict())

        def _load_scaler(self, checkpoint):
            scaler = getattr(self.accelerator, "scaler", None)
            if checkpoint and scaler is not None and (Path(checkpoint) / "scaler.safetensors").is_file():
                scaler.load_state_dict(load_state(checkpoint, "scaler"))

        def _save_rng_state(self, output_dir):
            state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
            if torch.cuda.is_available():
                state["cuda"] = torch.cuda.random.get_rng_state_all()
            save_state(output_dir, "rng_state", state)

        def _load_rng_state(self, checkpoint):
            if not checkpoint or not (Path(checkpoint) / "rng_state.safetensors").is_file():
                return
            state = load_state(checkpoint, "rng_state")
            random.setstate(state["python"])
            np.random.set_state(state["numpy"])
            torch.random.set_rng_state(state["cpu"])
            if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
                torch.cuda.random.set_rng_state_all(state["cuda"])

    return Trainer
