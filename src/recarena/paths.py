"""Where recarena's packaged files live, importing nothing heavy."""

from __future__ import annotations

from pathlib import Path

#: The Hydra config tree, inside the package so that an installed wheel has it (``recarena/conf/``; in a source
#: checkout ``conf/`` at the root links to it): the config path of train.py and ``recarena train``, read by the
#: checks, the benchmark, ``recarena.compose`` and the tests.
CONF_DIR = Path(__file__).resolve().parent / "conf"
