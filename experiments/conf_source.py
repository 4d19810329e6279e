"""Where the Hydra entry points read ``conf/``: the installed package or the checkout's folder.

pyproject.toml installs ``conf/`` as the package ``experiments.conf`` (``conf/__init__.py``), so
a wheel install reads its configs through Hydra's ``pkg://experiments.conf`` search path; an
editable install maps that package onto the checkout's ``conf/``. Where the package cannot be
imported (the checkout on ``PYTHONPATH`` without an install, or an editable install made before
the mapping existed) the apps read ``conf/`` beside ``experiments/`` as a folder. Either way
``hydra.searchpath`` and ``--config-dir`` add to this primary source.
"""

from importlib.util import find_spec
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The checkout's Hydra config directory."""

CONF_PACKAGE = "experiments.conf"
"""The importable name of ``conf/`` (pyproject.toml ``[tool.setuptools] package-dir``)."""


def config_path() -> str:
    """``hydra.main``'s ``config_path``: ``pkg://experiments.conf`` when that package imports,
    else the absolute path of the checkout's ``conf/`` folder."""
    if find_spec(CONF_PACKAGE) is not None:
        return f"pkg://{CONF_PACKAGE}"
    return str(CONF_DIR)
