import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vitpeft import config as study_config
from vitpeft.config import ModelSpec
from vitpeft.models import create_model

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake_command(workdir, configfile, *args, snakefile=REPO / "Snakefile") -> list[str]:
    """The repository's workflow run in ``workdir`` with ``configfile``, as a user would call it."""
    return [
        SNAKEMAKE,
        "-s",
        str(snakefile),
        "-d",
        str(workdir),
        "--configfile",
        str(configfile),
        *args,
    ]


TINY_CONFIG = REPO / "tests" / "tiny_config.yaml"


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """The tiny study built locally to paper.pdf, once per session: its working directory.

    Tests read it and may plan (``-n``) in it, or build further targets (the submission archive),
    but must not change what is there.
    """
    if shutil.which("latexmk") is None or shutil.which("pdftotext") is None:
        pytest.fail("latexmk and pdftotext are required: `make test` installs them")
    workdir = tmp_path_factory.mktemp("tiny_study")
    cmd = snakemake_command(workdir, TINY_CONFIG, "--cores", "2", "paper.pdf")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


@pytest.fixture
def demo_config():
    return study_config.load(yaml.safe_load((REPO / "config.yaml").read_text()))


@pytest.fixture
def tiny_config():
    return study_config.load(yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text()))


@pytest.fixture
def tiny_spec():
    return ModelSpec(
        "deit_tiny", img_size=16, patch_size=4, backbone={"source": "pretrain"}, kwargs={"depth": 2}
    )


@pytest.fixture
def tiny_model(tiny_spec):
    import torch

    torch.manual_seed(0)
    return create_model(tiny_spec, num_classes=10)


def prepare(model, name, hyperparameters=None, total_steps=100, probe_batch=None):
    """A method applied to ``model`` on CPU, as the trainer would."""
    import torch

    from vitpeft.methods import method_config, prepare_model
    from vitpeft.methods.base import MethodContext

    context = MethodContext(total_steps=total_steps, device=torch.device("cpu"), probe_batch=probe_batch)
    return prepare_model(model, method_config(name, hyperparameters), context)
