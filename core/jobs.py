"""Long jobs (training, merging, exporting, downloading) as child processes, watched by a background thread.

A job is `python -m core train|merge ...` started without a shell, in its own session, so
closing the browser or restarting the panel never kills it. A small record per lane
(workspace/job.json, workspace/download-job.json) lets a restarted panel find it again.

Jobs run in two lanes, one job each: the machine's work (training, merging, exporting: they share
the GPU, the CPU and the disk's bandwidth) and downloads (the network). So a model downloads while
another trains, and a second training run waits for the first.

When a training child dies without writing a final state (the kernel's OOM killer, a
segfault, a stop while it was still starting) the watcher writes the final state, with the
cause in words (core.status decides the words).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from core import gpus, hub, merge, models, paths, runs, status
from core.config import DownloadConfig, ExportConfig, MergeConfig, TrainConfig
from core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
# Called before a training child starts, with the GPUs it will train on (their numbers on the page, gpus.trains_on),
# so the panel can free a chat model holding their memory.
before_train: list = []


WORK, DOWNLOAD = "work", "download"  # the lanes
LANE_FILES = {WORK: "job.json", DOWNLOAD: "download-job.json"}


def lane(kind: str) -> str:
    """The lane a job of `kind` runs in."""
    return DOWNLOAD if kind == "download" else WORK


def lane_file(which: str = WORK) -> Path:
    """The record of lane `which`'s newest job (what lets a restarted panel find it)."""
    return paths.home() / LANE_FILES[which]


@dataclass
class Job:
    """One child process: a training run (folder = the run) or a merge (folder = the output)."""

    kind: str
    pid: int
    folder: str
    started: float
    argv: list[str]
    log: str = ""
    oom_kills: int | None = None  # the cgroup's OOM-kill count when the job started
    proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        """True while the child process is running."""
        if self.proc is not None:
            return self.proc.poll() is None
        return status.pid_alive(self.pid) and _same_process(self)

    def state(self) -> str:
        """The job's state, from the status.json in its folder (the run, or a merge's job folder)."""
        return status.read(self.folder, self.log)["state"]

    def log_tail(self, n: int = 40) -> str:
        """The last n lines of the child's output."""
        return runs.log_tail(self.log, n)

    def record(self) -> dict:
        return {k: getattr(self, k) for k in RECORD}


RECORD = ("kind", "pid", "folder", "started", "argv", "log", "oom_kills")


def _same_process(job: Job) -> bool:
    """Guard against pid reuse: the process must be ours (same command, started when we started it)."""
    try:
        import psutil

        p = psutil.Process(job.pid)
        return abs(p.create_time() - job.started) < 10 and p.cmdline()[-len(job.argv) + 1:] == job.argv[1:]
    except Exception:
        return False


def _newer(now: dict, job: Job) -> bool:
    """True when the status file belongs to a later job in the same folder that still runs (a Resume).

    The pid in status.json is the training process itself: the job's pid for one process, rank 0's
    under a launcher. A dead pid there is this job's (or a finished one's): the final word is due.
    """
    pid = now.get("pid")
    return bool(pid) and int(pid) != job.pid and status.pid_alive(pid)


def _now_name(model: str) -> str:
    short = Path(model.rstrip("/")).name.lower() or "model"
    short = "".join(c if c.isalnum() or c in "-." else "-" for c in short)[:24]
    if short in ("default", ""):
        short = "smollm2"
    return f"{datetime.now():%Y-%m-%d_%H%M}_{short}"


# One lock for every manager of this process: a start and a supervisor's final word never interleave.
_LOCK = threading.Lock()


class JobManager:
    """Starts, stops and watches the jobs of a workspace (one per lane); a new manager reattaches to them."""

    def __init__(self, command: list[str] | None = None):
        # The child command; tests swap in a small fake that follows the same protocol.
        self.command = command or [sys.executable, "-m", "core"]
        self._lock = _LOCK
        self._watched: set[int] = set()
        self._mine: dict[str, Job] = {}  # per lane: the job this manager started (it holds the child's handle)

    # ---- looking -----------------------------------------------------------------------
    def current(self, which: str = WORK) -> Job | None:
        """The job still running in lane `which` (started by this panel or an earlier one), or None."""
        job = self._recorded(which)
        if job is None:
            return None
        mine = self._mine.get(which)
        if mine is not None and mine.pid == job.pid:
            job = mine
        if not job.alive():
            return None
        self._watch(job)  # a restarted panel must still notice a crash
        return job

    def last(self) -> Job | None:
        """The newest job of this workspace in either lane, running or ended (its status says which), or None."""
        return max(self.lasts().values(), key=lambda job: job.started, default=None)

    def lasts(self) -> dict[str, Job]:
        """The newest job of each lane that has had one, running or ended."""
        return {which: job for which in LANE_FILES if (job := self._recorded(which)) is not None}

    @staticmethod
    def _recorded(which: str) -> Job | None:
        try:
            rec = json.loads(lane_file(which).read_text(encoding="utf-8"))
            return Job(**{k: rec[k] for k in RECORD if k in rec})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    # ---- starting ----------------------------------------------------------------------
    def start_train(self, cfg: TrainConfig, env: dict | None = None) -> Job:
        """Validate cfg, create the run folder, save config.json and start the training child."""
        if not cfg.out:
            cfg = cfg.replace(out=str(paths.unique(paths.runs() / _now_name(cfg.model))))
        from core.train import check_input

        run = Path(cfg.out).resolve()
        if cfg.resume and not (run / "config.json").is_file():
            raise UserError(f"resume: {run} is not a run folder", field="out", zh=f"resume：{run} 不是运行文件夹")
        check_input(cfg, fetch=False)  # the child's own check: nothing starts that would fail at once
        with self._lock:
            self._refuse_second(WORK)
            if runs.locked(run):  # trained from a terminal, say: its files are not ours to rewrite
                raise UserError(f"out: run {run.name} is being trained by another process; wait for it or stop it",
                                field="out", zh=f"out：运行 {run.name} 正在被另一个进程训练；请等待它结束或停止它")
            for hook in list(before_train):
                hook(gpus.trains_on(cfg.gpus))
            run.mkdir(parents=True, exist_ok=True)
            cfg = cfg.replace(out=str(run))
            cfg.save(run / "config.json")
            status.clear_stop(run)
            # A resumed run keeps its step and adapter on the page until the child says more, and its clock goes on
            # from the time it has trained so far.
            earlier = status.read_json(run / status.FILE) if cfg.resume else {}
            status.write_json(run / status.FILE, {
                **status.FIELDS, "step": earlier.get("step", 0), "adapter": earlier.get("adapter"),
                "max_steps": earlier.get("max_steps") or cfg.max_steps, "state": "starting", "started": time.time(),
                "elapsed_before": status.spent(run) if cfg.resume else None})
            argv = ["train", "--config", str(run / "config.json"), "--out", str(run)]
            if cfg.resume:
                argv.append("--resume")
            return self._spawn("train", argv, run, run / "train.log", env, gpus.parse(cfg.gpus))

    def resume(self, run: str | Path, env: dict | None = None) -> Job:
        """Restart a stopped or failed run from its last checkpoint."""
        run = Path(run)
        state = status.read(run)["state"]
        if state not in ("stopped", "failed"):
            raise UserError(f"resume: run {run.name} is {state}; only a stopped or failed run can be resumed",
                            zh=f"resume：运行 {run.name} 的状态是 {state}；只有已停止或失败的运行才能继续")
        cfg = TrainConfig.load(run / "config.json").replace(resume=True, out=str(run))
        return self.start_train(cfg, env)

    def start_merge(self, cfg: MergeConfig) -> Job:
        """Start merging an adapter into its base model in a child process."""
        if not cfg.out:
            run = Path(cfg.adapter).resolve().parent.name or "model"
            cfg = cfg.replace(out=str(paths.unique(paths.merged() / run)))
        cfg.check()
        models.check_adapter(cfg.adapter)  # the merge's own check: a missing, damaged or diverged adapter
        out = Path(cfg.out).resolve()
        if out.exists():
            raise UserError(f"out: {out} already exists; choose another folder", field="out",
                            zh=f"out：{out} 已存在，请换一个文件夹")
        argv = ["merge", "--adapter", str(Path(cfg.adapter).resolve()), "--out", str(out), "--dtype", cfg.dtype,
                "--base-weights", cfg.base_weights]
        if cfg.base:
            argv += ["--base", cfg.base]
        if cfg.trust_remote_code:
            argv.append("--trust-remote-code")
        # status.json and the log go into a folder beside the output; the model appears when whole
        return self._start_beside("merge", merge.job_folder(out), argv)

    def start_export(self, cfg: ExportConfig) -> Job:
        """Start exporting a merged model to GGUF in a child process (status beside the output, like a merge)."""
        if not cfg.out:
            cfg = cfg.replace(out=str(paths.unique(paths.exports() / (Path(cfg.model).name or "model"))))
        cfg.check()
        out = Path(cfg.out).resolve()
        if out.exists():
            raise UserError(f"out: {out} already exists; choose another folder", field="out",
                            zh=f"out：{out} 已存在，请换一个文件夹")
        argv = ["export", "--model", str(Path(cfg.model).resolve()), "--out", str(out), "--quant", cfg.quant]
        return self._start_beside("export", merge.job_folder(out), argv)

    def start_download(self, cfg: DownloadConfig, env: dict | None = None) -> Job:
        """Start downloading a model from a hub id into workspace/models in a child process.

        Starting the same download again after a stop or a failure continues from the files on disk.
        """
        cfg.check()
        out = hub.target(cfg)
        if out.exists():
            raise UserError(f"name: {out.name} already exists in {out.parent}; choose another name", field="name",
                            zh=f"name：{out.parent} 中已有 {out.name}，请换个名字")
        argv = ["download", "--repo", cfg.repo, "--source", cfg.source, "--out", str(out), "--kind", cfg.kind,
                "--rows", str(cfg.rows), "--seed", str(cfg.seed)]
        if cfg.endpoint:
            argv += ["--endpoint", cfg.endpoint]
        if cfg.allow_bin:
            argv.append("--allow-bin")
        return self._start_beside("download", hub.job_folder(out), argv, env, message=cfg.repo)

    def _start_beside(self, kind: str, folder: Path, argv: list[str], env: dict | None = None, **fields) -> Job:
        """Start a job that keeps its status.json and KIND.log in `folder` (beside what it writes)."""
        with self._lock:
            self._refuse_second(lane(kind))
            folder.mkdir(parents=True, exist_ok=True)
            status.clear_stop(folder)
            status.write_json(folder / status.FILE, {**status.FIELDS, "state": "starting", "started": time.time(),
                                                     **fields})
            return self._spawn(kind, argv, folder, folder / f"{kind}.log", env)

    def _refuse_second(self, which: str) -> None:
        job = self.current(which)
        if job is None:
            return
        if job.kind == "train" and job.state() in status.FINAL:
            # It has said its last word and is only exiting (freeing the GPU): give it a moment.
            deadline = time.time() + 20
            while job.alive() and time.time() < deadline:
                time.sleep(0.2)
            if not job.alive():
                return
        what = {"train": "a training run", "merge": "a merge", "export": "an export",
                "download": "a download"}.get(job.kind, "a job")
        what_zh = {"train": "训练", "merge": "合并", "export": "导出", "download": "下载"}.get(job.kind, "任务")
        raise UserError(f"{what} is already going: {Path(job.folder).name}; stop it first or wait",
                        zh=f"已有{what_zh}在进行：{Path(job.folder).name}；请先停止它或等待")

    def _spawn(self, kind: str, argv: list[str], folder: Path, log: Path, env: dict | None,
               picked: list[str] | None = None) -> Job:
        # The chosen GPU alone (several visible GPUs make a single-process trainer refuse to start),
        # or the chosen GPUs with one process each under torchrun.
        full_env = gpus.narrow({**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, picked or [])
        full_env.setdefault("PYTHONPATH", str(ROOT))
        n = gpus.processes(picked or [], full_env) if kind == "train" else 1
        command = gpus.command(self.command, argv, n)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                command, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        job = Job(kind, proc.pid, str(folder), time.time(), command, str(log), status.oom_kills(), proc)
        self._mine[lane(kind)] = job
        status.write_json(lane_file(lane(kind)), job.record())
        # A pid in status.json lets any reader tell a vanished job from a live one.
        now = status.read_json(folder / status.FILE)
        if now.get("state") == "starting" and not now.get("pid"):
            status.write_json(folder / status.FILE, {**now, "pid": proc.pid})
        self._watch(job)
        return job

    # ---- watching ----------------------------------------------------------------------
    def _watch(self, job: Job) -> None:
        if job.pid in self._watched:
            return
        self._watched.add(job.pid)
        threading.Thread(target=self._supervise, args=(job,), name=f"job-{job.pid}", daemon=True).start()

    def _supervise(self, job: Job) -> None:
        if job.proc is not None:
            code = job.proc.wait()
        else:  # reattached: not our child, so poll until it is gone
            while job.alive():
                time.sleep(1.0)
            code = None
        try:
            self._final_word(job, code)
        except Exception as e:  # a full disk, say: the reader's fallback still shows the run as ended
            print(f"supervisor: could not write the final state of {job.folder}: {e}", file=sys.stderr, flush=True)

    def _final_word(self, job: Job, code: int | None) -> None:
        """Write the final state of a job whose child ended without writing one itself."""
        path = Path(job.folder) / status.FILE
        with self._lock:  # start_train writes the same file under this lock
            now = status.read_json(path)
            if now.get("state") in status.FINAL or _newer(now, job):
                return
            self._write_final(job, path, now, code)

    def _write_final(self, job: Job, path: Path, now: dict, code: int | None) -> None:
        stopping = status.stop_requested(job.folder)
        oom = job.oom_kills is not None and (status.oom_kills() or 0) > job.oom_kills
        error, hint = status.ended(code, job.log, stopping, out_of_memory=oom, kind=job.kind)
        now.update(status.bilingual({"error": error, "hint": hint}), state="stopped" if stopping else "failed",
                   ended=time.time())
        now.setdefault("pid", job.pid)
        status.write_json(path, now)

    # ---- stopping ----------------------------------------------------------------------
    def stop(self, job: Job | None = None, grace: float = 120.0) -> Job | None:
        """Ask the job (by default the running one of the work lane) to stop after its current step (stop file,
        SIGINT), then SIGTERM, SIGKILL as last resort."""
        job = job or self.current()
        if job is None or not job.alive():
            return None
        if job.kind in ("train", "download"):  # read by the child between steps and while it starts
            status.request_stop(job.folder)
        threading.Thread(target=self._escalate, args=(job, grace), name=f"stop-{job.pid}", daemon=True).start()
        return job

    def _escalate(self, job: Job, grace: float) -> None:
        # Under torchrun the stop file alone asks politely: rank 0 reads it and every rank stops at
        # the same step. A SIGINT would make the launcher end its workers at once, unsaved. The
        # harder signals then go to the whole process group: the launcher and every rank.
        launched = gpus.LAUNCHER in job.argv
        signals = (signal.SIGTERM, signal.SIGKILL) if launched else (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
        if launched and _wait_gone(job, grace):
            return
        for sig in signals:
            try:
                os.killpg(job.pid, sig) if launched else os.kill(job.pid, sig)
            except ProcessLookupError:
                return
            if _wait_gone(job, grace):
                return


def _wait_gone(job: Job, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not job.alive():
            return True
        time.sleep(0.2)
    return not job.alive()


_manager = JobManager()


def current(which: str = WORK) -> Job | None:
    """The live job of lane `which` (WORK: training, merge, export; DOWNLOAD), or None."""
    return _manager.current(which)


def training_gpus() -> set[int]:
    """The GPUs (their numbers on the page) the running training uses: those its config.json chose, else the
    first one the panel sees, as the job was started (gpus.narrow); empty when no training runs."""
    job = current()
    if job is None or job.kind != "train":
        return set()
    folder = getattr(job, "folder", "")
    return gpus.trains_on(runs.read_config(folder).get("gpus") if folder else "")


def last() -> Job | None:
    """The newest job of this workspace, running or ended."""
    return _manager.last()


def lasts() -> dict[str, Job]:
    """The newest job of each lane, running or ended."""
    return _manager.lasts()


def start_train(cfg: TrainConfig, env: dict | None = None) -> Job:
    """Start a training run (see JobManager.start_train)."""
    return _manager.start_train(cfg, env)


def start_merge(cfg: MergeConfig) -> Job:
    """Start a merge (see JobManager.start_merge)."""
    return _manager.start_merge(cfg)


def start_export(cfg: ExportConfig) -> Job:
    """Start a GGUF export (see JobManager.start_export)."""
    return _manager.start_export(cfg)


def resume(run: str | Path, env: dict | None = None) -> Job:
    """Resume a stopped or failed run."""
    return _manager.resume(run, env)


def start_download(cfg: DownloadConfig, env: dict | None = None) -> Job:
    """Start a download (see JobManager.start_download)."""
    return _manager.start_download(cfg, env)


def stop(job: Job | None = None, grace: float = 120.0) -> Job | None:
    """Stop the running job after its current step."""
    return _manager.stop(job, grace)
