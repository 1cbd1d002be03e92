"""Where recarena's packaged files live, importing nothing heavy."""

from __future__ import annotations

from pathlib import Path

#: The Hydra config tree (``conf/``): train.py's config path, read by the checks, the benchmark and the tests.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
