import os
import signal
import subprocess
import sys

import pytest

from vitpeft.io import (
    atomic_path,
    atomic_write,
    canonical,
    config_hash,
    cpu_name,
    provenance,
    read_json,
    remove_partial_writes,
    write_json,
)


def test_atomic_write_keeps_old_content_when_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write('{"half": ')
        raise RuntimeError("killed")
    assert read_json(target) == {"a": 1}
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError), atomic_path(tmp_path / "fig.pdf") as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_a_writer_killed_mid_write_leaves_a_partial_file_that_the_rerun_removes(tmp_path):
    writer = (
        "import sys, time\n"
        "from vitpeft.io import atomic_path, atomic_write\n"
        "with atomic_write(sys.argv[1] + '/metrics.json') as handle, "
        "atomic_path(sys.argv[1] + '/model.onnx') as tmp:\n"
        "    handle.write('{\"half\": ')\n"
        "    handle.flush()\n"
        "    tmp.write_bytes(b'partial')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    kept = [tmp_path / "metrics.csv", tmp_path / ".hidden", tmp_path / "sub"]
    kept[0].write_text("x")
    kept[1].write_text("x")
    kept[2].mkdir()
    (kept[2] / ".other.partial.abc.tmp").write_text("below the folder: not this job's")
    process = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"writing\n"
        os.kill(process.pid, signal.SIGKILL)  # no finally, no except: the temp files stay
    finally:
        process.wait(timeout=30)
    left = {p.name for p in tmp_path.iterdir()} - {p.name for p in kept}
    assert len(left) == 2 and all(name.startswith((".metrics.json.", ".model.onnx.")) for name in left)
    assert sorted(p.name for p in remove_partial_writes(tmp_path)) == sorted(left)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_outputs_get_the_usual_file_permissions(tmp_path):
    import os
    import stat

    import torch
    from safetensors.torch import save_file

    write_json(tmp_path / "a.json", {})
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    with atomic_path(tmp_path / "c.safetensors") as tmp:  # safetensors recreates the file as 0600
        save_file({"w": torch.zeros(2)}, str(tmp))
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("a.json", "b.bin", "c.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask


def test_canonical_sorts_keys_at_every_level():
    value = canonical({"b": {"y": 1, "x": (1, 2)}, "a": 0})
    assert list(value) == ["a", "b"] and list(value["b"]) == ["x", "y"] and value["b"]["x"] == [1, 2]


def test_provenance_records_the_cpu_model_and_the_instruction_set_torch_dispatches_to():
    import torch

    hardware = provenance()["hardware"]
    assert hardware["cpu"] == cpu_name() and hardware["cpu"].strip()
    assert hardware["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # What torch used, not what the CPU could do: ATEN_CPU_CAPABILITY forces the portable kernels.
    forced = subprocess.run(
        [sys.executable, "-c", "from vitpeft.io import hardware; print(hardware()['cpu_capability'])"],
        env={**os.environ, "ATEN_CPU_CAPABILITY": "default"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert forced.stdout.strip() == "DEFAULT"
