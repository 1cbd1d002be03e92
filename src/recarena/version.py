"""recarena's version, in one place: the package metadata (pyproject's dynamic version), ``recarena.__version__``
and the version each run dir records (:mod:`recarena.rundir`) all read it. Imports nothing."""

__version__ = "0.1.0"
