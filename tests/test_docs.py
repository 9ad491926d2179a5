"""The documentation says what the code does: the configuration reference is the schema's, and
the README's study example loads."""

import copy
import re

import yaml
from conftest import REPO

from vitpeft import config as study_config
from vitpeft import schema_doc

README = (REPO / "README.md").read_text()


def test_every_config_key_is_documented_and_the_reference_is_the_schemas():
    assert schema_doc.undocumented() == []
    text = schema_doc.DOC.read_text()
    assert schema_doc.with_reference(text) == text, "run: python -m vitpeft.schema_doc --write"
    for key in ("studies.<name>.transfer_seeds", "compute.throughput_file", "tune.max_extensions"):
        assert f"| `{key}` |" in text


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = README.splitlines()
    assert len(lines) <= 150
    first = "\n".join(lines[:40])
    assert "make paper" in first and "make test" in first


def test_the_readmes_own_study_loads_and_plans_its_runs():
    (example,) = [block for block in re.findall(r"```yaml\n(.*?)```", README, re.S) if "studies:" in block]
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for name, study in yaml.safe_load(example)["studies"].items():
        loaded = study_config.load(
            {**copy.deepcopy(config), "studies": {**config["studies"], name: study}, "study": name}
        )
        assert study_config.study_methods(loaded) == study["methods"]
        run = study_config.resolve_run(loaded, study["models"][0], study["datasets"][0], "lora_r8", 0)
        assert run.model.img_size == 224
