"""Run a module under a GPU memory cap: `python bench/budget.py GIB -m core train ...`.

The cap is torch.cuda.set_per_process_memory_fraction, so an allocation past GIB fails with
an out-of-memory error exactly as it would on a card of that size.
"""

import os
import runpy
import sys

sys.path.insert(0, os.getcwd())  # run from the repository root, like `python -m core`
# The allocator reads its settings when CUDA starts, which the cap below does: set ours first.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch

gib = float(sys.argv[1])
if torch.cuda.is_available():
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(gib * 2**30 / total, 0)
assert sys.argv[2] == "-m", "usage: budget.py GIB -m MODULE [args]"
module, sys.argv = sys.argv[3], [sys.argv[3], *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
