"""A user's own data and any timm ViT, by config alone: image folders, VTAB-1k trees and Hugging
Face datasets prepared from fixtures written here, checked at load, and trained end to end."""

import copy
import json
import subprocess

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, snakemake_command
from fixtures import HF_CLASSES, VTAB_FIXTURE_SIZES, write_hf_dataset, write_image_folder, write_vtab_tree

from vitpeft import config as study_config
from vitpeft.config import ConfigError, ModelSpec
from vitpeft.data import arrays, prepare_dataset
from vitpeft.data.sizes import split_sizes
from vitpeft.data.sources import VTAB_GROUPS, VTAB_TASKS
from vitpeft.io import sha256_file
from vitpeft.runs import load_splits

SPLIT = {"split_seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}


def image_folder_spec(root, image_size=8):
    return {**SPLIT, "kind": "image_folder", "options": {"root": str(root), "image_size": image_size}}


def vtab_spec(root, task="kitti", image_size=8):
    return {**SPLIT, "kind": "vtab1k", "options": {"root": str(root), "task": task, "image_size": image_size}}


def hf_spec(path, image_size=8, **options):
    return {
        **SPLIT,
        "kind": "hf_dataset",
        "options": {
            "path": str(path),
            "image_column": "img",
            "label_column": "label",
            "image_size": image_size,
            **options,
        },
    }


def test_an_image_folder_is_prepared_with_its_classes_and_a_stratified_val(tmp_path):
    counts = write_image_folder(tmp_path / "images")
    manifest = prepare_dataset(image_folder_spec(tmp_path / "images"), tmp_path / "out")
    arrays.verify(tmp_path / "out")
    assert manifest["class_names"] == ["cat", "dog", "owl"]
    assert manifest["image_shape"] == [8, 8, 3]  # the grey-scale image too: converted to RGB
    per_split = manifest["counts_per_class"]
    # validation carved from train per class; test is the folder's own
    assert [t + v for t, v in zip(per_split["train"], per_split["val"], strict=True)] == list(
        counts["train"].values()
    )
    assert per_split["test"] == list(counts["test"].values())
    assert (
        all(v >= 1 for v in per_split["val"])
        and sum(per_split["val"]) == split_sizes(image_folder_spec(tmp_path / "images"))["val"]
    )
    assert manifest["source"]["files"] == sum(map(sum, (c.values() for c in counts.values())))
    (tmp_path / "images" / "test" / "cat" / "0.jpg").write_bytes(b"changed")
    with pytest.raises(ValueError, match="0.jpg"):
        prepare_dataset(image_folder_spec(tmp_path / "images"), tmp_path / "again")


def test_an_image_folder_with_its_own_val_keeps_it(tmp_path):
    import shutil

    counts = write_image_folder(tmp_path / "images")
    for name in ("cat", "dog"):
        shutil.copytree(tmp_path / "images" / "test" / name, tmp_path / "images" / "val" / name)
    manifest = prepare_dataset(image_folder_spec(tmp_path / "images"), tmp_path / "out")
    assert manifest["counts_per_class"]["train"] == list(counts["train"].values())  # none carved
    assert manifest["counts_per_class"]["val"] == [3, 3, 0]
    assert manifest["source"]["val"] == "official"
    (tmp_path / "images" / "val" / "fox").mkdir()
    with pytest.raises(ValueError, match=r"val/fox: class 'fox' is not in .*images/train$"):
        prepare_dataset(image_folder_spec(tmp_path / "images"), tmp_path / "again")


def test_a_vtab1k_task_keeps_its_lists_and_its_runs_train_on_train800val200(tmp_path):
    write_vtab_tree(tmp_path / "vtab", {"patch_camelyon": 2, "kitti": 4})
    for task, classes in (("patch_camelyon", 2), ("kitti", 4)):
        out = tmp_path / task
        manifest = prepare_dataset(vtab_spec(tmp_path / "vtab", task), out)
        assert manifest["class_names"] == [str(c) for c in range(classes)]
        sizes = {split: sum(manifest["counts_per_class"][split]) for split in arrays.SPLITS}
        assert sizes == {"train": 8, "val": 4, "test": 6}
        assert manifest["final_train"] == ["train", "val"]
        assert manifest["source"]["group"] == VTAB_TASKS[task].group
        lists = manifest["source"]["lists_sha256"]
        assert set(lists) == {"train800.txt", "val200.txt", "train800val200.txt", "test.txt"}
        assert lists["test.txt"] == sha256_file(tmp_path / "vtab" / task / "test.txt")
    tuning = load_splits(tmp_path / "kitti", torch.device("cpu"))
    final = load_splits(tmp_path / "kitti", torch.device("cpu"), final=True)
    assert len(tuning["train"]) == VTAB_FIXTURE_SIZES["train800.txt"]
    assert len(final["train"]) == VTAB_FIXTURE_SIZES["train800.txt"] + VTAB_FIXTURE_SIZES["val200.txt"]
    assert torch.equal(final["train"].images[8:], tuning["val"].images)
    assert torch.equal(final["val"].labels, tuning["val"].labels)


def test_the_vtab1k_tasks_are_the_nineteen_in_three_groups():
    assert len(VTAB_TASKS) == 19
    groups = {g: [t for t, task in VTAB_TASKS.items() if task.group == g] for g in VTAB_GROUPS}
    assert {g: len(tasks) for g, tasks in groups.items()} == {"natural": 7, "specialized": 4, "structured": 8}


def test_a_saved_hugging_face_dataset_is_prepared_with_its_class_label_names(tmp_path):
    write_hf_dataset(tmp_path / "hf")
    manifest = prepare_dataset(hf_spec(tmp_path / "hf"), tmp_path / "out")
    assert manifest["class_names"] == HF_CLASSES
    counts = manifest["counts_per_class"]
    assert [t + v for t, v in zip(counts["train"], counts["val"], strict=True)] == [6, 6]
    assert counts["test"] == [3, 3]
    images, labels = arrays.load_split(tmp_path / "out", "test")
    assert images.shape == (6, 8, 8, 3) and labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert manifest["source"]["files"] > 0 and len(manifest["source"]["files_sha256"]) == 64


def _vtab_with(tmp_path, edit):
    write_vtab_tree(tmp_path / "vtab", {"kitti": 4})
    edit(tmp_path / "vtab" / "kitti")
    return vtab_spec(tmp_path / "vtab")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: image_folder_spec(tmp / "nowhere"), r"options.root: .*nowhere is not a folder"),
        (
            lambda tmp: (
                (
                    write_image_folder(tmp / "images"),
                    (tmp / "images" / "train" / "cat" / "bad.png").write_text("x"),
                )
                and image_folder_spec(tmp / "images")
            ),
            r"train/cat/bad.png: not a readable image",
        ),
        (
            lambda tmp: _vtab_with(tmp, lambda task: (task / "val200.txt").unlink()),
            r"kitti/val200.txt: split list is missing",
        ),
        (
            lambda tmp: _vtab_with(tmp, lambda task: (task / "test.txt").write_text("images/test_0.jpg 4\n")),
            r"kitti/test.txt:1: label 4 is out of range 0..3",
        ),
        (lambda tmp: vtab_spec(tmp, task="imagenet"), r"options.task: unknown VTAB-1k task 'imagenet'"),
        (lambda tmp: vtab_spec(tmp / "nowhere"), r"options.root: .*nowhere/kitti is not a folder"),
        (
            lambda tmp: write_hf_dataset(tmp / "hf") or hf_spec(tmp / "hf", test_split="validation"),
            r"options.test_split: .*hf has no split 'validation'; it has \['test', 'train'\]",
        ),
        (
            lambda tmp: write_hf_dataset(tmp / "hf") or hf_spec(tmp / "hf", label_column="fine_label"),
            r"options.label_column: .*hf has no column 'fine_label'",
        ),
    ],
    ids=[
        "bad-root",
        "unreadable-image",
        "missing-list",
        "label-out-of-range",
        "unknown-task",
        "bad-vtab-root",
        "hf-split",
        "hf-column",
    ],
)
def test_bad_own_data_fails_in_one_line_naming_the_path_or_key(tmp_path, make, message):
    spec = make(tmp_path)
    with pytest.raises(ValueError, match=message) as err:
        prepare_dataset(spec, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def own_data_config(tmp_path):
    """The tiny config with an image folder, a VTAB-1k task and a saved Hugging Face dataset, on a
    2-block timm ViT named by its arch, pretrained here on the shapes."""
    write_image_folder(tmp_path / "images")
    write_vtab_tree(tmp_path / "vtab", {"patch_camelyon": 2, "kitti": 4})
    write_hf_dataset(tmp_path / "hf")
    config = yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text())
    config["models"] = {
        "tinyvit": {
            "arch": "vit_tiny_patch16_224",
            "img_size": 16,
            "patch_size": 4,
            "kwargs": {"depth": 2},
            "backbone": {"source": "pretrain", "dataset": "shapes"},
        }
    }
    config["resources"] = {"models": {"tinyvit": {"mem_mb": 1500, "runtime": 5}}}
    # no image_size: the datasets take the study's models' input size
    config["datasets"].update(
        images={"kind": "image_folder", "options": {"root": str(tmp_path / "images")}},
        kitti={"kind": "vtab1k", "options": {"root": str(tmp_path / "vtab"), "task": "kitti"}},
        hfdata={
            "kind": "hf_dataset",
            "options": {"path": str(tmp_path / "hf"), "image_column": "img", "label_column": "label"},
        },
    )
    config["studies"]["tiny"].update(
        models=["tinyvit"], datasets=["images", "kitti", "hfdata"], methods=["lora_r8"], transfer_check=False
    )
    return config


def test_own_data_and_a_timm_arch_are_checked_when_the_config_loads(tmp_path):
    config = own_data_config(tmp_path)
    loaded = study_config.load(copy.deepcopy(config))
    assert study_config.prepared_dataset_spec(loaded, "images")["options"]["image_size"] == 16
    spec = study_config.model_spec(loaded, "tinyvit")
    assert spec.arch == "vit_tiny_patch16_224" and spec.geometry().depth == 2
    cases = {
        ("datasets", "images", "options", "root"): (
            str(tmp_path / "nowhere"),
            r"datasets.images.options.root: .*nowhere is not a folder",
        ),
        ("datasets", "kitti", "options", "task"): (
            "kitty",
            r"datasets.kitti.options.task: unknown VTAB-1k task 'kitty'",
        ),
        ("datasets", "hfdata", "options", "image_column"): (
            "pixels",
            r"datasets.hfdata.options.image_column: .* no column 'pixels'",
        ),
        ("models", "tinyvit", "arch"): (
            "vit_tiny_patch99",
            r"models.tinyvit: arch: timm knows no model 'vit_tiny_patch99'",
        ),
        ("models", "tinyvit", "kwargs"): ({}, None),
    }
    for path, (value, message) in cases.items():
        broken = copy.deepcopy(config)
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        if message is None:
            study_config.load(broken)
            continue
        with pytest.raises(ConfigError, match=message) as err:
            study_config.load(broken)
        assert "\n" not in str(err.value)
    del config["datasets"]["images"]["options"]["root"]
    with pytest.raises(ConfigError, match=r"datasets.images.options.root: required by kind 'image_folder'"):
        study_config.load(config)


@pytest.mark.parametrize("arch", ["resnet18", "convnext_atto"])
def test_a_model_that_is_not_a_vit_fails_naming_it(arch):
    with pytest.raises(ValueError, match=rf"arch: '{arch}' is a \w+, not a timm VisionTransformer"):
        ModelSpec(name="net", timm_arch=arch)


def test_a_timm_arch_geometry_and_targets_match_the_built_model():
    import timm

    from vitpeft.methods import method_config

    spec = ModelSpec(name="b16", timm_arch="vit_base_patch16_224.augreg_in21k")
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=False, num_classes=0)
    assert sum(p.numel() for p in model.parameters()) == 85_798_656  # ViT-B/16 without its head
    geometry = spec.geometry()
    assert (geometry.width, geometry.depth, geometry.hidden, geometry.extra_tokens) == (768, 12, 3072, 1)
    widths = spec.block_widths()
    assert widths == {
        name.split("blocks.0.")[1]: module.in_features
        for name, module in model.named_modules()
        if name.startswith("blocks.0.") and isinstance(module, torch.nn.Linear)
    }
    with pytest.raises(ValueError, match="group_size 7"):
        method_config("qalora4_r8", {"qalora": {"group_size": 7}}).check_widths(
            widths, model="b16", layout=spec.layout
        )


def test_a_lora_cell_trains_and_exports_on_each_kind_of_own_data(tmp_path):
    config = own_data_config(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    targets = ["results/lora_r8_images", "results/lora_r8_kitti", "results/lora_r8_hfdata"]
    cmd = snakemake_command(work, tmp_path / "config.yaml", "--cores", "2", *targets)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    for dataset, classes, train_splits in (
        ("images", 3, ["train"]),
        ("kitti", 4, ["train", "val"]),  # VTAB-1k: train800 and val200 together
        ("hfdata", 2, ["train"]),
    ):
        manifest = json.loads((work / "resources" / "data" / dataset / "manifest.json").read_text())
        assert len(manifest["class_names"]) == classes and manifest["image_shape"] == [16, 16, 3]
        run = work / "results" / "runs" / dataset / "lora_r8" / "tinyvit" / "seed0"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["train_splits"] == train_splits
        assert metrics["train_images"] == sum(sum(manifest["counts_per_class"][s]) for s in train_splits)
        report = json.loads((run / "export" / "report.json").read_text())
        assert report and (run / "export" / "model.onnx").stat().st_size > 0
        assert json.loads((run / "config.json").read_text())["model"]["timm_arch"] == "vit_tiny_patch16_224"
        assert np.isfinite(metrics["test_top1"])


def test_the_vtab_study_plans_without_its_data_and_prints_its_compute(tmp_path):
    from vitpeft import compute

    config = study_config.load({**yaml.safe_load((REPO / "config.yaml").read_text()), "study": "vtab"})
    cmd = snakemake_command(tmp_path, REPO / "config.yaml", "-n", "paper.pdf", "--config", "study=vtab")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    assert compute.summary(config, compute.estimate_study(config)) in result.stderr
    planned = {
        line.split()[0]: int(line.split()[1])
        for line in result.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert planned["prepare_data"] == 19 and planned["train"] == 19 * 6 and planned["tune"] == 19 * 6
    tasks = {config["datasets"][name]["options"]["task"] for name in study_config.study(config)["datasets"]}
    assert tasks == set(VTAB_TASKS)
    spec = study_config.model_spec(config, "vit_b16_in21k")
    assert spec.arch == "vit_base_patch16_224.augreg_in21k" and spec.geometry().width == 768


def test_a_cell_target_says_which_study_and_model_it_trains(tmp_path):
    cmd = snakemake_command(tmp_path, REPO / "config.yaml", "-n", "results/lora_r8_cifar10")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    line = next(line for line in result.stderr.splitlines() if "results/lora_r8_cifar10 trains" in line)
    assert "the demo study's vit_w64_d4 (8 px, vit_tiny_patch16_224 at width 64, depth 4)" in line
    assert line.endswith("cifar10 is not in that study: for its models add --config study=full")
    cmd = snakemake_command(tmp_path, REPO / "config.yaml", "-n", "results/lora_r8_digits")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr.count("results/lora_r8_digits trains") == 1
    assert "not in that study" not in result.stderr
