"""The ``recarena`` command (also ``python -m recarena``): one entry point that dispatches to subcommands.

Each subcommand is the ``main(argv)`` of the module that owns it, so the logic lives in one place:
``recarena fetch ml-100k`` (recarena.data.sources), ``recarena leaderboard PATH...`` (recarena.report),
``recarena recommend RUN_DIR --user 196``, ``recarena similar RUN_DIR TITLE`` and ``recarena search RUN_DIR WORDS``
(recarena.commands.use),
``recarena evaluate|explain|export RUN_DIR`` (recarena.commands.inspect), and ``recarena train [overrides]``
(recarena.commands.train; Hydra owns that command line, as ``python train.py ...`` in a source checkout).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module whose ``main(argv)`` runs it, argv prefix, one-line help)
COMMANDS: dict[str, tuple[str, list[str], str]] = {
    "train": ("recarena.commands.train", [], "train and test a configuration (Hydra overrides; -m: a sweep)"),
    "fetch": ("recarena.data.sources", ["fetch"], "fill the data cache with a MovieLens release"),
    "leaderboard": ("recarena.report", [], "rebuild leaderboard.md/.csv/.html from run or sweep dirs"),
    "benchmark": ("recarena.benchmark", [], "tune every family on validation with one budget, then test once"),
    "recommend": ("recarena.commands.use", ["recommend"], "top-K unseen movies for a user of a trained run"),
    "similar": ("recarena.commands.use", ["similar"], "movies nearest to one by a trained run's item embeddings"),
    "search": ("recarena.commands.use", ["search"], "movies nearest to keywords (siamese descriptors)"),
    "evaluate": ("recarena.commands.inspect", ["evaluate"], "re-score a trained run with other ks / threshold"),
    "explain": ("recarena.commands.inspect", ["explain"], "item biases and a PCA plot of a trained run's items"),
    "export": ("recarena.commands.inspect", ["export"], "a trained run's user and item embeddings to parquet"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"} or args[0] not in COMMANDS:
        lines = [f"  {name:<12} {help_}" for name, (_, _, help_) in COMMANDS.items()]
        print("usage: recarena COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines)
              + "\n\nrecarena train --help: the config groups and their options")  # fmt: skip
        return 0 if not args or args[0] in {"-h", "--help"} else 2
    module, prefix, _ = COMMANDS[args[0]]
    return int(importlib.import_module(module).main([*prefix, *args[1:]]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
