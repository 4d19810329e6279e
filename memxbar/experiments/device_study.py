"""Hydra entry point of the device study: accuracy of the dense and compressed model across
device and periphery settings, Monte Carlo over programmed chips.

    python -m memxbar.experiments.device_study
    python -m memxbar.experiments.device_study study.source=outputs/compress/<date>/<time>

Outputs (study.csv, study.json, metrics.json, study.md, plots) go into the Hydra run directory.
"""

import hydra

from memxbar.experiments.conf_source import config_path
from memxbar.experiments.runtime import entry, run_app
from memxbar.experiments.study import run_device_study

main = hydra.main(config_path=config_path(), config_name="device_study", version_base="1.3")(
    entry(run_device_study, "study.md"))

if __name__ == "__main__":
    run_app(main)
