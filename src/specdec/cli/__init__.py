"""`specdec` command line: a dispatcher over one module per subcommand."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

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
    "doctor": ("doctor", "this machine's kernels, numerics, bandwidth and the step's distance "
               "from its limit"),
}

USAGE = "usage: specdec [--debug] COMMAND [options]   (specdec COMMAND --help for its options)" \
    "\n\n" + "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()) + \
    "\n\n  --debug    show the traceback of every error (also SPECDEC_DEBUG=1; before or " \
    "after COMMAND)"

DEBUG_FLAG = "--debug"
DEBUG_ENV = "SPECDEC_DEBUG"
# file-system errors on a path the message names: the user can fix the path or permissions
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    argv, debug = _debug_flag(argv)
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
    except KeyboardInterrupt:
        print("specdec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a command that stopped reading (`| head`)
        return 141
    except Exception as error:  # noqa: BLE001 - the one place every error is reported
        if is_user_error(error):
            if debug:
                traceback.print_exc()
            print(f"specdec: error: {error}", file=sys.stderr)
        else:  # a bug: the traceback is what a report needs
            traceback.print_exc()
            print(f"specdec: internal error ({type(error).__name__}); the traceback above "
                  "is what a bug report needs", file=sys.stderr)
        return 1


def is_user_error(error: BaseException) -> bool:
    """Errors the user can act on (one line); anything else is a bug (traceback)."""
    if isinstance(error, SpecdecError):
        return True
    return isinstance(error, PATH_ERRORS) and error.filename is not None


def _debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """argv without --debug (anywhere before a `--`), and whether debugging is on."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return kept, env or len(kept) != len(argv)


if __name__ == "__main__":
    sys.exit(main())
