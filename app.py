"""`python app.py`: the QLoRA Studio panel in the browser, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line flags; --share without --auth is refused (exit 2)."""
    parser = argparse.ArgumentParser(prog="python app.py", description="Open the QLoRA Studio control panel.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1: this machine only).")
    parser.add_argument("--port", type=int, default=7860, help="Port to listen on (default 7860).")
    parser.add_argument("--share", action="store_true", help="Also open a public gradio.live link (needs --auth).")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="Ask for this user name and password.")
    parser.add_argument("--allow-dir", metavar="FOLDER", action="append", default=[],
                        help="A folder outside the workspace that the panel may read (model folders, data); repeatable.")
    parser.add_argument("--max-upload-mb", type=int, default=2048,
                        help="Largest file a browser may upload, in MB (default 2048; the whole Belle 0.5M file is about 250).")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="Listen on a non-local address without a password (anyone on the network gets the panel).")
    args = parser.parse_args(argv)
    if args.auth is not None and (":" not in args.auth or not all(args.auth.split(":", 1))):
        parser.exit(2, "error: --auth must be USER:PASSWORD, e.g. --auth me:a-long-secret\n")
    if args.share and not args.auth:
        parser.exit(2, "error: --share makes the panel public on the internet; add --auth USER:PASSWORD to protect it\n")
    if not is_local(args.host) and not args.auth and not args.insecure_no_auth:
        parser.exit(2, f"error: --host {args.host} lets other machines reach the panel, which can read and write files "
                       "in its workspace; add --auth USER:PASSWORD to protect it\n")
    for folder in args.allow_dir:
        if not Path(folder).expanduser().is_dir():
            parser.exit(2, f"error: --allow-dir {folder}: no such folder\n")
    return args


def is_local(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.insecure_no_auth and not is_local(args.host) and not args.auth:
        print(f"WARNING: the panel listens on {args.host} WITHOUT A PASSWORD: anyone who can reach this machine can "
              "read and write files in its workspace and start jobs on its GPU.", file=sys.stderr, flush=True)
    if args.allow_dir:  # read by core.paths in this process and in every job it starts
        from core import paths

        os.environ[paths.ALLOW_ENV] = os.pathsep.join(str(Path(d).expanduser().resolve()) for d in args.allow_dir)
    # The panel's handlers run in threads, and transformers' lazy first import is not thread-safe
    # (two tabs loading a tokenizer at once can fail): import it once, here, before any request.
    import transformers  # noqa: F401

    from ui import layout

    transformers.AutoTokenizer, transformers.AutoModelForCausalLM  # noqa: B018
    demo = layout.build()
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    # Jobs are GPU-bound and sequential, but the live views must keep polling while one runs.
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                show_error=True, max_file_size=args.max_upload_mb * 1024 * 1024, **layout.launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
