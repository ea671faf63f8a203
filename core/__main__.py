"""`python -m core COMMAND ...`: the engine from the command line.

Each command lives in its own module with a `cli(argv)` function. A UserError ends the
command with exit code 2 and one line on stderr; nothing else is printed.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

from core.errors import UserError

COMMANDS = {
    "prepare": ("core.data", "sample and convert an instruction file into a training dataset"),
    "train": ("core.train", "QLoRA fine-tune a model on a prepared dataset"),
    "merge": ("core.merge", "merge a trained adapter into its base model"),
    "export": ("core.export", "export a merged model to GGUF with an Ollama Modelfile"),
    "download": ("core.hub", "download a model from a hub id (Hugging Face, a mirror, ModelScope)"),
    "chat": ("core.chat", "chat with a model, a merged model or base + adapter"),
    "monitor": ("core.monitor", "print a GPU / CPU / RAM snapshot"),
}


def _scan_once() -> None:
    """transformers and trl each map every installed distribution to its import names when imported
    (importlib.metadata.packages_distributions): 0.1 s in this project's own environment, 0.8 to 1.7 s a scan in one
    with many packages (the GPU machine's, docs/BENCHMARKS.md). One command maps them once; each caller gets its own
    copy."""
    import functools
    import importlib.metadata as metadata

    scan = metadata.packages_distributions
    if getattr(scan, "scanned_once", False):
        return
    cached = functools.cache(scan)

    def packages_distributions():
        return {name: list(dists) for name, dists in cached().items()}

    packages_distributions.scanned_once = True
    metadata.packages_distributions = packages_distributions


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Libraries' notices about their own future versions are not for the person at the terminal,
    # and would break the promise of one line on stderr for a mistake.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m core COMMAND [options]   (COMMAND --help for its options)\n")
        for name, (_, about) in COMMANDS.items():
            print(f"  {name:<8} {about}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    _scan_once()
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        return module.cli(argv[1:]) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # out of memory, or a failure nobody foresaw: one line, never a traceback
        if os.environ.get("QLORA_STUDIO_DEBUG"):
            raise
        from core.status import explain

        error, hint = explain(e, argv[0] if argv[0] in ("merge", "chat", "download") else "train")
        if hint == "see train.log":  # not for a command at the terminal
            hint = "QLORA_STUDIO_DEBUG=1 shows the traceback"
        print(f"error: {argv[0]}: {error}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
