"""Shared fixtures: a private workspace per test session, the embedded model converted once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Under pytest-xdist each worker gets its share of the cores, for itself and the children it starts: with
# torch's thread pool in every one of them taking all the cores, a CPU training run slowed to 5 tokens/s.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core import gpus  # noqa: E402 - after the path is set

ASSETS = ROOT / "assets"

# Nothing may be fetched from a model hub in tests, here or in CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


# The tests call the engine in this process, where CUDA may start before train() could narrow the
# GPUs it sees: like every job, this process sees one GPU. The multigpu tests start their own
# children with all of the machine's GPUs visible.
MACHINE_GPUS = gpus.count()
os.environ.update({k: v for k, v in gpus.one().items() if k.startswith("CUDA_")})


def pytest_collection_modifyitems(config, items):
    cuda = _has_cuda()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    skip_multi = pytest.mark.skip(reason="needs at least 2 CUDA GPUs (run on the two-GPU machine)")
    for item in items:
        if "multigpu" in item.keywords and MACHINE_GPUS < 2:
            item.add_marker(skip_multi)
        elif "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)


def modeling_state() -> dict:
    """What transformers' modeling modules hold now: each module's names, and the attributes of its classes."""
    state = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("transformers.models.") and ".modeling_" in name and module is not None:
            names = dict(vars(module))
            classes = {c: dict(vars(c)) for c in names.values() if isinstance(c, type) and c.__module__ == name}
            state[name] = (names, classes)
    return state


def restore_modeling(state: dict) -> None:
    """Put back what modeling_state() saw: a name or a class attribute replaced since gets its old value."""
    for name, (names, classes) in state.items():
        module = sys.modules.get(name)
        for key, value in names.items() if module is not None else ():
            if vars(module).get(key) is not value:
                setattr(module, key, value)
        for cls, attrs in classes.items():
            for key, value in attrs.items():
                if key not in ("__dict__", "__weakref__") and cls.__dict__.get(key) is not value:
                    setattr(cls, key, value)


@pytest.fixture(scope="session", autouse=True)
def modeling_originals() -> dict:
    """transformers' modeling code as it is before any test or fixture trains (the Llama code loaded first)."""
    import transformers.models.llama.modeling_llama  # noqa: F401

    return modeling_state()


@pytest.fixture(autouse=True)
def modeling_unpatched(modeling_originals):
    """Training on a GPU with Liger's kernels patches transformers' modeling code for the whole process (rotary
    embedding, norms, the model's forward). The panel trains in a child process, so its chat never sees that; a
    test or a fixture that trains in this process would leave it to every later test here (measured on an H200: a
    compiled chat of the embedded model wrote 31 tokens/s after such a test, 531 without, and a model on the CPU
    met Liger's GPU kernels). Each test starts and ends with the code as transformers wrote it: a module's or the
    session's fixture may have trained just before the test."""
    restore_modeling(modeling_originals)
    yield
    restore_modeling(modeling_originals)


@pytest.fixture(scope="session", autouse=True)
def workspace(tmp_path_factory):
    """Every test session gets an empty workspace; the model cache is shared and reused."""
    home = tmp_path_factory.mktemp("workspace")
    os.environ["QLORA_STUDIO_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def base_model() -> str:
    """The embedded default converted to a regular model folder (once per machine)."""
    from core import models
    from core.errors import UserError

    try:
        return str(models.embedded())
    except UserError as e:
        # The GPU machine may lack the embedded package (its 98 MB file exceeds what a call can
        # carry): skip there. On CPU machines `make test` installs it, so a failure is real.
        if _has_cuda():
            pytest.skip(str(e))
        raise


@pytest.fixture(scope="session")
def tokenizer(base_model):
    from core import models

    return models.load_tokenizer(base_model)


@pytest.fixture(scope="session")
def tiny_adapter(base_model, tmp_path_factory) -> Path:
    """A small LoRA adapter on the embedded model, laid out like a run's: weights, tokenizer, record."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core import models
    from core.template import Template

    folder = tmp_path_factory.mktemp("tiny") / "adapter"
    torch.manual_seed(0)
    net = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32),
                         LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    net.save_pretrained(folder)
    models.load_tokenizer(base_model).save_pretrained(folder)
    models.write_record(folder, {"base_model": "default", "template": Template().to_dict()})
    return folder
