"""A notice when a job ends (training, merge, export): a browser notification where the user allowed
them, and the tab title (`✓ finished · QLoRA Studio`) in any case.

The panel polls the status of each lane's newest job (a training run, merge or export; a download:
core/jobs.py) every few seconds, as it does for the progress it shows. The page remembers the last
state it saw of each; when a job it saw running reaches a final state, the title changes and, if the
user said yes when asked (on a click, never on load), a notification appears. A job that had
already ended when the page opened gives no notice.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from core import jobs, status
from ui.i18n import lang, say, t

TITLE = "QLoRA Studio"
MARKS = {"finished": "✓", "failed": "✗", "stopped": "■"}

# The page's side: compare with the state seen last; on live → final, the title and a notification.
ON_STATE = """(lanes) => {
  const live = ["starting", "running", "stopping"];
  const seen = window.qlsJobs || {};
  for (const job of lanes || []) {
    const before = seen[job.lane] || {};
    if (before.id === job.id && live.includes(before.state) && job.title && !live.includes(job.state)) {
      document.title = job.title;
      if ("Notification" in window && Notification.permission === "granted") {
        new Notification(job.title, {body: job.body});
      }
    } else if (live.includes(job.state) && before.id !== job.id) {  // a new job: the last one's mark goes
      document.title = "%s";
    }
    seen[job.lane] = {id: job.id, state: job.state};
  }
  window.qlsJobs = seen;
}""" % TITLE
ASK = """() => {
  if ("Notification" in window && Notification.permission === "default") { Notification.requestPermission(); }
}"""


def latest(request: gr.Request = None) -> list[dict]:
    """Each lane's newest job (core/jobs.py): its lane, an id, its state, and for an ended one the title and
    notification text in the reader's language."""
    return [dict(lane=which, **_said(job, request)) for which, job in jobs.lasts().items()]


def _said(job, request) -> dict:
    now = status.read(job.folder, job.log)
    state = now["state"]
    out = {"id": f"{job.pid}:{job.started}", "state": state, "kind": job.kind}
    if state in MARKS:
        language = lang(request)
        name = Path(job.folder).name.lstrip(".").removesuffix(".job")
        out["title"] = f"{MARKS[state]} {say('notice_' + state, language)} · {TITLE}"
        body = say("notice_body", language, job=say("job_" + job.kind, language), name=name,
                   state=say("notice_" + state, language))
        error = status.words(now, language)[0]
        out["body"] = body + (f" — {error}" if state == "failed" and error else "")
    return out


def build() -> dict:
    """The hidden job watcher and the button that asks for the browser's permission to notify."""
    ask = gr.Button(t("notice_ask"), size="sm", elem_id="notice-ask", scale=0, min_width=220)
    job = gr.JSON(visible=False)
    timer = gr.Timer(2.0)
    timer.tick(latest, None, job, api_name=False, show_progress="hidden").then(None, job, None, js=ON_STATE)
    ask.click(None, None, None, js=ASK)
    return {"ask": ask, "job": job}
