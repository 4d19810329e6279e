"""memxbar: memristor crossbar compression, simulation and cost estimation.

Three layers, one namespace (so that no folder of a user's own, e.g. ``experiments/``, can
shadow them):

* :mod:`memxbar.crossbar`: the device-level simulator and the cost model (knows nothing of
  ADMM);
* :mod:`memxbar.admm`: ADMM and OBC compression (knows nothing of devices beyond "allowed
  levels");
* :mod:`memxbar.experiments`: the run layer, Hydra apps (``python -m
  memxbar.experiments.compress``, ``...device_study``, ``...collect``, ``...replot``),
  settings, stages, reports, model zoo and data loaders; its configs are :mod:`memxbar.conf`.
"""

__version__ = "0.1.0"
