"""The ``lit-sr`` console script (also ``python -m lit_sr``).

``lit-sr sweep`` goes straight to :mod:`lit_sr.sweep.cli`, which does not import Lightning: its workers and
trials are processes of their own, and the import costs about 5 s of CPU. Every other command, and
``lit-sr --help``, is :func:`lit_sr.cli.main`.
"""

from __future__ import annotations

import os
import sys

from lit_sr.errors import DEBUG_VAR


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = [a for a in argv if a != "--debug"]
    if rest[:1] != ["sweep"]:
        from lit_sr.cli import main as cli_main

        return cli_main(argv)
    if len(rest) < len(argv):
        os.environ[DEBUG_VAR] = "1"  # as lit_sr.cli.main sets it
    from lit_sr.sweep.cli import main as sweep_main

    return sweep_main(rest[1:])


if __name__ == "__main__":
    sys.exit(main())
