"""The `appliance` command's entry point: the command line's imports with the cyclic garbage collector paused.

Start-up makes a few hundred thousand objects (modules, classes, pydantic schemas) that live as long as the
process; collections while they are being made only walk them again and again (about 60 ms of the 0.7 s of
imports on 2 cores). Nothing is left uncollected: the collector is on again once the imports are done, and
`appliance run` pauses it once more only until its services listen.
"""

from __future__ import annotations

import gc


def main() -> None:
    gc.disable()
    try:
        from appliance.cli.main import main as command_line
    finally:
        gc.enable()
    command_line()
