"""A local stand-in for the Hugging Face hub: the endpoints huggingface_hub and datasets' streaming use.

    GET  /api/models/OWNER/NAME[/revision/REV]        repo info with its files and their sizes
    GET  /api/models/OWNER/NAME/tree/REV[/PATH]       the file list (under PATH)
    HEAD /OWNER/NAME/resolve/REV/FILE                 size, ETag and commit of one file
    GET  /OWNER/NAME/resolve/REV/FILE                 the file, or the part a Range header asks for

and the same under /api/datasets/ and /datasets/ for a dataset repo.
A gated repo answers 401 (X-Error-Code: GatedRepo) and an unknown one 404 (RepoNotFound), as the
real hub does. Files are sent at `rate` bytes a second, so a test can stop a download half-way;
every request is kept in `requests` (method, path, Range header), and the file bytes sent for each answer in `sent`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHA = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 64 * 1024


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], gated: tuple[str, ...] = (), rate: float = 0.0):
        self.repos, self.gated, self.rate = repos, set(gated), rate
        self.requests: list[tuple[str, str, str | None]] = []
        self.sent: list[int] = []  # file bytes written for each answer (a client that stops reading stops it)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- answers -----------------------------------------------------------------------------
    def answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = h.path.split("?")[0]
        self.requests.append((h.command, path, h.headers.get("Range")))
        api = re.fullmatch(r"/api/(?:models|datasets)/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
        tree = re.fullmatch(r"/api/(?:models|datasets)/([^/]+/[^/]+)/tree/[^/]+(?:/(.*))?", path)
        resolve = re.fullmatch(r"/(?:datasets/)?([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
        repo = (api or tree or resolve)[1] if (api or tree or resolve) else None
        if repo in self.gated:
            return self.error(h, 401, "GatedRepo", f"Access to model {repo} is restricted.")
        if repo not in self.repos:
            return self.error(h, 404, "RepoNotFound", "Repository not found")
        files = self.repos[repo]
        if api:
            siblings = [{"rfilename": n, "size": len(b), "blobId": _oid(b)} for n, b in files.items()]
            return self.json(h, {"id": repo, "modelId": repo, "sha": SHA, "private": False, "gated": False,
                                 "siblings": siblings, "tags": [], "downloads": 0, "likes": 0}, body)
        if tree:
            under = f"{tree[2]}/" if tree[2] else ""
            listed = [{"type": "file", "path": n, "size": len(b), "oid": _oid(b)} for n, b in files.items()
                      if n.startswith(under)]
            if under and not listed:
                return self.error(h, 404, "EntryNotFound", f"{tree[2]} not found")
            return self.json(h, listed, body)
        name = resolve[2]
        if name not in files:
            return self.error(h, 404, "EntryNotFound", f"{name} not found")
        self.file(h, files[name], body)

    def file(self, h, data: bytes, body: bool) -> None:
        start, end = 0, len(data)
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range") or "")
        if asked:
            start, end = int(asked[1]), min(len(data), int(asked[2]) + 1 if asked[2] else len(data))
        h.send_response(206 if asked else 200)
        h.send_header("Content-Length", str(end - start))
        if asked:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{_oid(data)}"')
        h.send_header("X-Repo-Commit", SHA)
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if not body:
            return
        sent = 0
        try:
            for i in range(start, end, CHUNK):
                h.wfile.write(data[i:min(i + CHUNK, end)])
                sent += min(CHUNK, end - i)
                if self.rate:
                    time.sleep(CHUNK / self.rate)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (killed, or it had read enough)
            pass
        self.sent.append(sent)

    def json(self, h, data, body: bool) -> None:
        raw = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        if body:
            h.wfile.write(raw)

    def error(self, h, code: int, kind: str, message: str) -> None:
        raw = json.dumps({"error": message}).encode()
        h.send_response(code)
        h.send_header("X-Error-Code", kind)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(raw)


class FakeModelScope(FakeHub):
    """A local stand-in for ModelScope: the /api/v1 endpoints that modelscope's HubApi and snapshot_download use.

        GET /api/v1/models/OWNER/NAME/repo/files?Revision=R&Recursive=True   the listing, folders as Type "tree"
        GET /api/v1/models/OWNER/NAME/repo?Revision=R&FilePath=F             the file, or the part a Range asks for
        GET /api/v1/models/OWNER/NAME[/revisions]                            repo info, branches and tags
        GET /api/v1/datasets/OWNER/NAME/repo/tree?Revision=R&Recursive=True&PageNumber=P&PageSize=S
                                                                             a dataset's listing, page by page
        GET /api/v1/datasets/OWNER/NAME/repo?Revision=R&FilePath=F           a dataset's file

    Answers are wrapped as the site wraps them ({"Code": 200, "Data": ..., "Success": true}); the listing
    gives each file's Sha256, which the client checks after the download. An unknown repo answers 404
    ("模型不存在"); a gated one 401 ("用户未登录") without a token and 403 with a token not in `allowed`.
    The site's numeric business codes for those are not published, so the body carries the HTTP status
    as its Code. `requests` keeps (method, path with its query, Range) and `tokens` (path, the token the
    request carried, as a bearer header or the m_session_id cookie the client sets).
    """

    def __init__(self, repos: dict[str, dict[str, bytes]], gated: tuple[str, ...] = (), rate: float = 0.0,
                 datasets: dict[str, dict[str, bytes]] | None = None):
        self.tokens: list[tuple[str, str | None]] = []
        self.allowed: set[str] = set()
        self.datasets = datasets or {}  # dataset repos, served under /api/v1/datasets/
        super().__init__(repos, gated, rate)

    def answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((h.command, h.path, h.headers.get("Range")))
        cookie = re.search(r"m_session_id=([^;]+)", h.headers.get("Cookie") or "")
        token = (h.headers.get("Authorization") or "").removeprefix("Bearer ") or (cookie[1] if cookie else None)
        self.tokens.append((h.path, token))
        if url.path == "/api/v1/repos/internalAccelerationInfo":  # as off Alibaba Cloud: no faster route
            return self.json(h, self.wrap({"InternalRegionQueryAddress": ""}), body)
        found = re.fullmatch(r"/api/v1/(models|datasets)/([^/]+/[^/]+)(/repo/files|/repo/tree|/repo|/revisions)?",
                             url.path)
        if not found or (found[1] == "datasets") != (found[3] in ("/repo/tree", "/repo")) and found[3] != "/repo":
            return self.failure(h, 404, "not found")
        kind, repo, what = found[1], found[2], found[3]
        if repo in self.gated and token not in self.allowed:
            return self.failure(h, 403, "无权限访问") if token else self.failure(h, 401, "用户未登录")
        served = self.datasets if kind == "datasets" else self.repos
        if repo not in served:
            return self.failure(h, 404, "数据集不存在" if kind == "datasets" else "模型不存在")
        files = served[repo]
        if what == "/repo/tree":  # paged, as the site pages a dataset's listing
            size, page = int(query.get("PageSize", 100)), int(query.get("PageNumber", 1))
            listed = [{"Name": n.rsplit("/", 1)[-1], "Path": n, "Type": "blob", "Size": len(b),
                       "Sha256": hashlib.sha256(b).hexdigest(), "Revision": SHA} for n, b in sorted(files.items())]
            return self.json(h, self.wrap({"Files": listed[(page - 1) * size:page * size]}), body)
        if what == "/repo/files":
            folders = sorted({n.rsplit("/", 1)[0] for n in files if "/" in n})
            listed = [{"Name": f.rsplit("/", 1)[-1], "Path": f, "Type": "tree", "Size": 0} for f in folders]
            listed += [{"Name": n.rsplit("/", 1)[-1], "Path": n, "Type": "blob", "Size": len(b),
                        "Sha256": hashlib.sha256(b).hexdigest(), "Revision": SHA} for n, b in files.items()]
            return self.json(h, self.wrap({"Files": listed}), body)
        if what == "/repo":
            name = query.get("FilePath", "")
            if name not in files:
                return self.failure(h, 404, f"file {name} not found")
            return self.file(h, files[name], body)
        if what == "/revisions":
            return self.json(h, self.wrap({"RevisionMap": {"Branches": [{"Revision": "master"}], "Tags": []}}), body)
        return self.json(h, self.wrap({"Path": repo.split("/")[0], "Name": repo.split("/")[1], "Visibility": 5}), body)

    @staticmethod
    def wrap(data) -> dict:
        return {"Code": 200, "Data": data, "Message": "success", "RequestId": "fake", "Success": True}

    def failure(self, h, code: int, message: str) -> None:
        raw = json.dumps({"Code": code, "Data": None, "Message": message, "RequestId": "fake", "Success": False},
                         ensure_ascii=False).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(raw)


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def tiny_model(tokenizer_folder, hidden: int = 16) -> dict[str, bytes]:
    """The files of a small random Llama that transformers can load, with a real tokenizer (the embedded one's).

    Its embeddings (49152 x `hidden` in float32) make one weight file of a few MB: big enough to stop half-way.
    """
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save

    folder = Path(tokenizer_folder)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": 2 * hidden, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 1, "head_dim": hidden // 2, "vocab_size": 49152, "max_position_embeddings": 512,
              "tie_word_embeddings": True, "torch_dtype": "float32", "rms_norm_eps": 1e-5}
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (49152, hidden), "model.norm.weight": (hidden,),
              "model.layers.0.input_layernorm.weight": (hidden,),
              "model.layers.0.post_attention_layernorm.weight": (hidden,),
              "model.layers.0.self_attn.q_proj.weight": (hidden, hidden),
              "model.layers.0.self_attn.k_proj.weight": (hidden // 2, hidden),
              "model.layers.0.self_attn.v_proj.weight": (hidden // 2, hidden),
              "model.layers.0.self_attn.o_proj.weight": (hidden, hidden),
              "model.layers.0.mlp.gate_proj.weight": (2 * hidden, hidden),
              "model.layers.0.mlp.up_proj.weight": (2 * hidden, hidden),
              "model.layers.0.mlp.down_proj.weight": (hidden, 2 * hidden)}
    weights = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in shapes.items()}
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": save(weights)}
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (folder / name).is_file():
            files[name] = (folder / name).read_bytes()
    return files
