"""`python app.py`: the QLoRA Studio panel in the browser, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import sys


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line flags; --share without --auth is refused (exit 2)."""
    parser = argparse.ArgumentParser(prog="python app.py", description="Open the QLoRA Studio control panel.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1: this machine only).")
    parser.add_argument("--port", type=int, default=7860, help="Port to listen on (default 7860).")
    parser.add_argument("--share", action="store_true", help="Also open a public gradio.live link (needs --auth).")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="Ask for this user name and password.")
    args = parser.parse_args(argv)
    if args.auth is not None and (":" not in args.auth or not all(args.auth.split(":", 1))):
        parser.exit(2, "error: --auth must be USER:PASSWORD, e.g. --auth me:a-long-secret\n")
    if args.share and not args.auth:
        parser.exit(2, "error: --share makes the panel public on the internet; add --auth USER:PASSWORD to protect it\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from ui import layout

    # The panel's handlers run in threads, and transformers' lazy first import is not thread-safe
    # (two tabs loading a tokenizer at once can fail): import it once, here, before any request.
    import transformers  # noqa: F401

    transformers.AutoTokenizer, transformers.AutoModelForCausalLM  # noqa: B018
    demo = layout.build()
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    # Jobs are GPU-bound and sequential, but the live views must keep polling while one runs.
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                show_error=True, **layout.launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
