"""The compressors, one module each, behind one interface: an adapter ``(model, (train, test)
loaders, inputs: CompressInputs) -> admm.CompressResult`` that reads nothing but its arguments,
compresses ``model`` in place and is resumable from ``compressed.pt`` in ``inputs.run_dir``
(:func:`experiments.compressors.base.stored_or_run`).

* :mod:`~experiments.compressors.admm`: ADMM prune / retrain / quantize / retrain;
* :mod:`~experiments.compressors.magnitude`: magnitude pruning + fine-tuning (the baseline);
* :mod:`~experiments.compressors.obc`: post-training Optimal Brain Compression;
* :mod:`~experiments.compressors.ternary`: structured pruning + ternary weights with Weight
  Penalty Clipping;
* :mod:`~experiments.compressors.adaptive_levels`: levels per layer from the posterior
  uncertainty and the programming cost;
* :mod:`~experiments.compressors.pruned`: the prune stage those two start from;
* :mod:`~experiments.compressors.registry`: the top-level ``compressor`` key -> its adapter;
* :mod:`~experiments.compressors.settings`: their config blocks (``admm``, ``obc``,
  ``ternary``, ``adaptive_levels``, ``allocation``).

Adding a compressor: its module (the adapter, reading only :class:`CompressInputs`), one entry
in ``registry.COMPRESSORS`` and ``settings.SETTINGS_BLOCK``, its config block and its docs.
This package's ``__init__`` imports nothing, so the settings import no adapter.
"""
