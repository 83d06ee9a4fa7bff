"""The ``lit-sr`` console script (also ``python -m lit_sr``).

``lit-sr sweep`` goes straight to :mod:`lit_sr.sweep.cli`, which does not import Lightning: its workers and
trials are processes of their own, and the import costs about 5 s of CPU. Every other command, and
``lit-sr --help``, is :func:`lit_sr.cli.main`.
"""

from __future__ import annotations

import sys

from lit_sr.errors import take_debug_flag


def main(argv: list[str] | None = None) -> int:
    argv = take_debug_flag(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["sweep"]:
        from lit_sr.cli import main as cli_main

        return cli_main(argv)
    from lit_sr.sweep.cli import main as sweep_main

    return sweep_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
