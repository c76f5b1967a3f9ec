"""`specdec` command line: a dispatcher over one module per subcommand."""

from __future__ import annotations

import importlib
import sys

from specdec.errors import SpecdecError

# name -> (module under specdec.cli, one-line help). Each module has main(argv) -> int.
COMMANDS = {
    "theory": ("theory", "speedup theory: optimal gamma, S, E and operations for alpha and c"),
    "generate": ("generate", "generate text with speculative decoding, streamed (--show, --json)"),
    "chat": ("chat", "interactive multi-turn chat with the model's chat template, streamed"),
    "models": ("models", "offline model registry: `models list`, `models fetch NAME`, "
               "`models clear [NAME]`"),
    "bench": ("bench", "Spec-Bench: every method on the same prompts, interleaved; report"),
    "serve": ("serve", "OpenAI-compatible HTTP server with token streaming and metrics"),
}

USAGE = "usage: specdec COMMAND [options]   (specdec COMMAND --help for its options)\n\n" + \
    "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from specdec import __version__

        print(f"specdec {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"specdec: error: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"specdec.cli.{COMMANDS[argv[0]][0]}")
    try:
        return module.main(argv[1:])
    except (SpecdecError, ValueError, OSError) as error:
        # errors meant for the user: one line, no traceback
        print(f"specdec: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("specdec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
