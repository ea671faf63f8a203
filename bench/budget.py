"""Run a module under a GPU memory cap: `python bench/budget.py GIB -m core train ...`.

The cap is torch.cuda.set_per_process_memory_fraction on every visible GPU, so an allocation past
GIB on any of them fails with an out-of-memory error exactly as it would on cards of that size.
CUDA starts here, before the module runs: give the child the GPUs it should see in
CUDA_VISIBLE_DEVICES (the module can no longer narrow them).
"""

import os
import runpy
import sys

sys.path.insert(0, os.getcwd())  # run from the repository root, like `python -m core`
# The allocator reads its settings when CUDA starts, which the cap below does: set ours first.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch

gib = float(sys.argv[1])
for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(gib * 2**30 / total, index)
assert sys.argv[2] == "-m", "usage: budget.py GIB -m MODULE [args]"
module, sys.argv = sys.argv[3], [sys.argv[3], *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
