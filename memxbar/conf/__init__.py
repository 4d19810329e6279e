"""The Hydra configs, installed as the package ``memxbar.conf`` (pyproject.toml maps it onto
this directory) so that an installed wheel's apps read them as ``pkg://memxbar.conf``."""
