"""Subcommands of the ``recarena`` command that use a trained run (argument parsing and printing only; the
logic is in :mod:`recarena.inference`)."""
