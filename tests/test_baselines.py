"""The classical baselines: scikit-learn on the raw pixels of the prepared splits."""

import copy
from collections import Counter

import numpy as np
import pytest

from vitpeft import config as study_config
from vitpeft.baselines import BASELINE_NAMES, candidates, capped, fit_baseline
from vitpeft.config import ConfigError
from vitpeft.io import read_json, sha256_file

MACHINE = ("fit_time_s", "provenance")
# On digits' stratified 60/20/20 split (seed 0); a sane range, not the exact number.
EXPECTED_TEST_TOP1 = {"logreg": (93.0, 99.0), "svc": (96.0, 100.0), "knn": (95.0, 100.0)}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from vitpeft.data import prepare_dataset

    spec = {"kind": "sklearn_digits", "split_seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
    data = tmp_path_factory.mktemp("data") / "digits"
    prepare_dataset(spec, data)
    return data


@pytest.fixture
def spec(tiny_config):
    """The schema's defaults, as a config without a baselines section gets them."""
    return tiny_config["baselines"]


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_each_baseline_on_digits_is_accurate_deterministic_and_recorded(digits, spec, tmp_path, name):
    record = fit_baseline(name, digits, spec, tmp_path / f"{name}.json")
    assert read_json(tmp_path / f"{name}.json") == record
    low, high = EXPECTED_TEST_TOP1[name]
    assert low <= record["test_top1"] <= high and 90.0 <= record["val_top1"] <= 100.0
    assert record["train_images"] == record["train_images_available"] == 1077 and not record["subsampled"]
    assert record["feature_dim"] == 64 and record["dataset"] == "digits"
    assert record["data_manifest_sha256"] == sha256_file(digits / "manifest.json")
    assert record["provenance"]["sklearn"] and record["provenance"]["packages"]["numpy"]
    assert record["fit_time_s"] > 0
    again = fit_baseline(name, digits, spec, tmp_path / "again.json")
    assert without_machine(again) == without_machine(record)


def without_machine(record):
    """A record less what the machine decides: times and provenance."""
    kept = {k: v for k, v in record.items() if k not in MACHINE}
    kept["candidates"] = [{k: v for k, v in c.items() if k not in MACHINE} for c in kept["candidates"]]
    return kept


def test_the_defaults_are_the_usual_scikit_learn_settings(spec):
    assert candidates(spec["logreg"]) == [{"C": 1.0, "max_iter": 1000}]
    assert candidates(spec["svc"]) == [{"C": 1.0, "gamma": "scale"}]
    assert candidates(spec["knn"]) == [{"n_neighbors": 3}]


def test_hyperparameters_are_chosen_on_validation_and_every_candidate_is_recorded(digits, spec, tmp_path):
    grid = {**spec, "knn": {"n_neighbors": [1, 3, 5, 25]}}
    record = fit_baseline("knn", digits, grid, tmp_path / "knn.json")
    tried = record["candidates"]
    assert [c["params"]["n_neighbors"] for c in tried] == [1, 3, 5, 25]
    best = max(c["val_top1"] for c in tried)
    first_best = next(c for c in tried if c["val_top1"] == best)
    assert record["hyperparameters"] == first_best["params"] and record["val_top1"] == best
    assert tried[-1]["val_top1"] < best  # 25 neighbours blur digits' classes


def test_a_large_train_split_is_subsampled_stratified_and_says_so(digits, spec, tmp_path):
    record = fit_baseline("logreg", digits, {**spec, "max_train_images": 300}, tmp_path / "logreg.json")
    assert record["train_images"] == 300 and record["subsampled"] and record["max_train_images"] == 300
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 100, 100, 100, 100, 103])
    kept = capped(labels, 300, seed=0)
    assert len(kept) == 300 and np.all(np.diff(kept) > 0)
    assert set(Counter(labels[kept]).values()) <= {29, 30, 31}  # every class in its share
    assert capped(labels, 5000, seed=0).tolist() == list(range(len(labels)))


def test_data_that_no_longer_match_their_manifest_are_refused(digits, spec, tmp_path):
    import shutil

    copy_dir = tmp_path / "digits"
    shutil.copytree(digits, copy_dir)
    (copy_dir / "test.npz").write_bytes((copy_dir / "test.npz").read_bytes() + b"\0")
    with pytest.raises(ValueError, match="does not match the manifest"):
        fit_baseline("knn", copy_dir, spec, tmp_path / "knn.json")
    assert not (tmp_path / "knn.json").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b["svc"].update(C=[0.0]), "instance['baselines']['svc']['C'][0]"),
        (lambda b: b["svc"].update(gamma=["wide"]), "'wide'"),
        (lambda b: b["knn"].update(n_neighbors=[0]), "instance['baselines']['knn']['n_neighbors'][0]"),
        (lambda b: b["knn"].update(k=[3]), "'k' was unexpected"),
        (lambda b: b.update(max_train_images=0), "instance['baselines']['max_train_images']"),
        (lambda b: b.update(mlp={}), "'mlp' was unexpected"),
    ],
)
def test_a_bad_baselines_section_is_rejected_at_load_naming_the_key(demo_config, edit, message):
    bad = copy.deepcopy(demo_config)
    edit(bad["baselines"])
    with pytest.raises(ConfigError) as err:
        study_config.load(bad)
    assert message in str(err.value)
