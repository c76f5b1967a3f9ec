"""Commands import what they need, lazily: transformers' modeling stack (seconds of start-up)
is imported when a model loads, not when `specdec generate` parses its arguments."""

import subprocess
import sys

LIGHT = ["specdec.cli.generate", "specdec.cli.chat", "specdec.cli.theory", "specdec.cli.models",
         "specdec.models"]


def test_command_modules_do_not_import_transformers():
    code = f"import sys, {', '.join(LIGHT)}; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
