"""A stand-in for `python -m core train` that follows the run-folder protocol, for supervisor tests.

FAKE_MODE picks the behaviour: ok (finishes), crash (SIGKILLs itself mid-run, no final state),
error (a UserError-style exit 2), deaf (ignores SIGINT, only SIGTERM stops it), slow_start
(dies of a stop signal before it has written anything).
FAKE_STEPS and FAKE_STEP_S set the length.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

args = sys.argv[1:]
run = Path(args[args.index("--out") + 1])
run.mkdir(parents=True, exist_ok=True)  # a download's --out: the folder a real one creates when whole
mode = os.environ.get("FAKE_MODE", "ok")
steps = int(os.environ.get("FAKE_STEPS", "5"))
step_s = float(os.environ.get("FAKE_STEP_S", "0.3"))
stop = {"asked": False}


def write_status(**kw):
    path = run / "status.json"
    status = json.loads(path.read_text()) if path.exists() else {}
    status.update(kw)
    tmp = run / ".status.tmp"
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def on_signal(sig, frame):
    stop["asked"] = True
    write_status(state="stopping")


if mode == "slow_start":  # killed by the first SIGINT, as a real child is while it still imports
    time.sleep(30)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, signal.SIG_IGN if mode == "deaf" else on_signal)

print("fake trainer: secret is", "set" if os.environ.get("WANDB_API_KEY") else "unset", flush=True)
if mode == "error":
    print("error: model: folder /nope not found", file=sys.stderr, flush=True)
    sys.exit(2)
write_status(state="running", pid=os.getpid(), max_steps=steps, device="cpu", mode="fake")
start = 0
if "--resume" in args and (run / "metrics.jsonl").exists():
    start = len((run / "metrics.jsonl").read_text().splitlines())
for step in range(start + 1, steps + 1):
    time.sleep(step_s)  # "the step"; a stop request is honoured only between steps
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "max_steps": steps, "loss": 3.0 / step, "time": time.time()}) + "\n")
    write_status(step=step)
    checkpoint = run / "checkpoints" / f"checkpoint-{step}"  # whole, as the real trainer leaves them
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "adapter_config.json").write_text("{}")
    (checkpoint / "adapter_model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": steps}))
    if mode == "crash" and step == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if stop["asked"]:
        break
(run / "adapter").mkdir(exist_ok=True)
(run / "adapter" / "adapter_config.json").write_text("{}")
write_status(state="stopped" if stop["asked"] else "finished", ended=time.time(), adapter=str(run / "adapter"))
