"""Make the repository's ``vitpeft`` package importable in any environment (e.g. `--sdm conda`,
whose environments hold the dependencies but not this checkout). Snakemake puts this folder on
``sys.path`` for every script; the package sits one level up."""

import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
