"""Hydra entry point of the whole pipeline (DESIGN.md "Data flow").

    python -m memxbar.experiments.compress          # digits + LeNet-5, about 20 s on 2 cores
    python -m memxbar.experiments.compress +experiment=mnist_lenet5
    python -m memxbar.experiments.compress -m device.programming.sigma=0,0.1 hydra/launcher=local

Outputs (config, checkpoints, plan.json, metrics.json, report.md, plots, cost/) go into the
Hydra run directory; see docs/experiments.md.
"""

import hydra

from memxbar.experiments.conf_source import config_path
from memxbar.experiments.pipeline import run_compress
from memxbar.experiments.runtime import entry, run_app

main = hydra.main(config_path=config_path(), config_name="config", version_base="1.3")(
    entry(run_compress, "report.md"))

if __name__ == "__main__":
    run_app(main)
