"""The convergence criterion: a plateau test on the validation top-1 curve, and its config key."""

import copy

import pytest

from vitpeft import config as study_config
from vitpeft.config import ConfigError
from vitpeft.convergence import ConvergenceCriterion

CRITERION = ConvergenceCriterion(window=3, tolerance=1.0)


@pytest.mark.parametrize(
    ("curve", "converged", "gain"),
    [
        ([40.0, 70.0, 80.0, 80.5, 80.8, 80.9], True, 0.9),  # the last 3 epochs gained 0.9
        ([40.0, 80.0, 80.5, 80.7, 81.0], True, 1.0),  # exactly the tolerance: at most, so converged
        ([40.0, 70.0, 80.0, 81.5], False, 41.5),  # still climbing from epoch 1
        ([50.0, 55.0, 60.0, 70.0, 71.5], False, 16.5),  # only the window counts: 71.5 - 55.0
        ([90.0, 92.0, 91.0, 85.0], True, -5.0),  # fell over the window: not climbing any more
        ([45.6, 57.5], False, None),  # fewer than window + 1 epochs: cannot be judged converged
        ([], False, None),
    ],
)
def test_plateau_test_on_curves(curve, converged, gain):
    verdict = CRITERION.judge(curve)
    assert verdict["converged"] is converged
    assert verdict["val_top1_gain_last_window"] == (None if gain is None else pytest.approx(gain))
    assert (verdict["convergence_window"], verdict["convergence_tolerance"]) == (3, 1.0)


def test_a_one_epoch_window_compares_the_last_two_epochs():
    assert ConvergenceCriterion(window=1, tolerance=0.5).judge([10.0, 80.0, 80.4])["converged"]
    assert not ConvergenceCriterion(window=1, tolerance=0.5).judge([10.0, 79.0, 80.0])["converged"]


def test_the_demo_states_its_criterion(demo_config):
    assert demo_config["convergence"] == {"window": 3, "tolerance": 1.0}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"window": 0}, "convergence.window: must be an integer >= 1 (epochs), got 0"),
        ({"window": 1.5}, "convergence.window: must be an integer >= 1 (epochs), got 1.5"),
        ({"window": True}, "convergence.window: must be an integer >= 1 (epochs), got True"),
        ({"tolerance": 0}, "convergence.tolerance: must be a number > 0 (points of top-1), got 0"),
        ({"tolerance": -1.0}, "convergence.tolerance: must be a number > 0 (points of top-1), got -1.0"),
        ({"tolerance": "1"}, "convergence.tolerance: must be a number > 0 (points of top-1), got '1'"),
        ({"windw": 3}, "convergence: "),
    ],
)
def test_a_bad_criterion_is_rejected_naming_key_and_value(demo_config, section, message):
    bad = copy.deepcopy(demo_config)
    bad["convergence"] = section
    with pytest.raises(ConfigError) as err:
        study_config.validate(bad)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"window": 0}, "0 is less than the minimum of 1"),
        ({"tolerance": 0}, "0 is less than or equal to the minimum of 0"),
        ({"window": 3, "patience": 2}, "'patience' was unexpected"),
    ],
)
def test_the_schema_rejects_a_bad_criterion_at_load(demo_config, section, message):
    bad = copy.deepcopy(demo_config)
    bad["convergence"] = section
    with pytest.raises(ConfigError) as err:
        study_config.load(bad)
    assert "convergence" in str(err.value) and message in str(err.value)
