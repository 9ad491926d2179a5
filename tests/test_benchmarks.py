"""The benchmark scripts run, at sizes that take seconds, and print what they promise.

Their numbers are not checked here: benchmarks measure, tests assert behaviour. The point is that
a user who runs one, on a GPU machine above all, does not meet a broken script.
"""

import re
import subprocess
import sys

from conftest import REPO


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_device_check_trains_every_method_through_the_trainer():
    out = run_script(
        "device_check.py",
        "--model",
        "deit_tiny",
        "--img-size",
        "16",
        "--patch-size",
        "4",
        "--batch-size",
        "4",
        "--steps",
        "2",
    )
    rows = dict(re.findall(r"^(\w+)\s+[\d.]+ img/s .* qkv (\S+)$", out, re.M))
    assert list(rows) == ["full", "linear", "lora_r8", "qlora8_r8", "qlora4_r8", "adalora_r8", "qalora4_r8"]
    assert rows["qlora4_r8"] == "peft.tuners.lora.bnb.Linear4bit"
    assert rows["qalora4_r8"] == "vitpeft.methods.qalora_layer.QALoraLinear"


def test_trainer_and_loader_benchmarks_print_their_ratios():
    out = run_script("trainer_vs_bare_loop.py", "--rounds", "1", "--steps", "2")
    assert re.search(r"lora_r8 / full: peak \d+\.\d+", out) and "qlora4_r8 / lora_r8" in out
    assert re.search(r"qalora4_r8 / lora_r8: peak \d+\.\d+", out)
    assert re.search(
        r"ratio\s+\d+\.\d+x", run_script("loader_vs_training.py", "--batch-size", "4", "--steps", "1")
    )
