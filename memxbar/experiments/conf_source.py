"""Where the Hydra entry points read ``memxbar/conf/``: the installed package or the checkout.

``memxbar/conf/`` is the package ``memxbar.conf`` (``memxbar/conf/__init__.py``), so the apps
read their configs through Hydra's ``pkg://memxbar.conf`` search path, from a wheel and from
an editable install alike. Where the package cannot be imported (an unusual ``sys.path``) the
apps read the folder beside ``memxbar/experiments/``. Either way ``hydra.searchpath`` and
``--config-dir`` add to this primary source.
"""

from importlib.util import find_spec
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The checkout's Hydra config directory."""

CONF_PACKAGE = "memxbar.conf"
"""The importable name of ``memxbar/conf/``."""


def config_path() -> str:
    """``hydra.main``'s ``config_path``: ``pkg://memxbar.conf`` when that package imports,
    else the absolute path of the checkout's ``memxbar/conf/`` folder."""
    if find_spec(CONF_PACKAGE) is not None:
        return f"pkg://{CONF_PACKAGE}"
    return str(CONF_DIR)
