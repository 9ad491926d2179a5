import copy

import pytest
import yaml
from conftest import REPO

from vitpeft import compute
from vitpeft import config as study_config
from vitpeft.config import ConfigError, RunConfig


def test_demo_config_is_valid_and_has_the_transfer_baseline(demo_config):
    methods = study_config.study_methods(demo_config)
    assert methods[-1] == "scratch" and methods.count("scratch") == 1
    for required in [
        "full",
        "linear",
        "lora_r4",
        "lora_r8",
        "lora_r16",
        "qlora8_r8",
        "qlora4_r8",
        "adalora_r8",
        "qalora4_r8",
    ]:
        assert required in methods
    assert study_config.study(demo_config)["seeds"] == [0, 1, 2, 3, 4]


def test_run_config_round_trips_through_json_dict(demo_config):
    run = study_config.resolve_run(demo_config, "vit_w64_d4", "digits", "lora_r8", 2)
    again = RunConfig.from_dict(run.to_dict())
    assert again == run
    assert again.method.r == 8 and again.method.target_modules == ("attention_qkv", "attention_out")


def test_pretrain_run_uses_pretrain_budget(demo_config):
    run = study_config.pretrain_run(demo_config, "vit_w64_d4")
    assert run.dataset == "glyphs"
    assert run.train.epochs == demo_config["pretrain"]["epochs"]
    assert run.method.lr == demo_config["pretrain"]["lr"]
    assert not run.method.uses_pretrained_backbone


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["studies"]["demo"]["methods"].append("qlora3_r8"), "'qlora3_r8'"),
        (
            lambda c: c["studies"]["demo"]["methods"].append("lora_r0"),
            "rank r must be a positive integer, got 0",
        ),
        (lambda c: c["studies"]["demo"]["models"].append("resnet50"), "unknown model 'resnet50'"),
        (lambda c: c["studies"]["demo"]["datasets"].append("cifar11"), "unknown dataset 'cifar11'"),
        (lambda c: c["methods"]["lora"].update(alpah=3), "unknown key 'alpah'"),
        (
            lambda c: c["methods"]["adalora"].update(init_r=4),
            "target rank 8 is above its initial rank init_r=4",
        ),
        (lambda c: c["methods"]["qlora"].update(compute_dtype="int8"), "compute_dtype"),
        (lambda c: c["methods"]["lora"].update(target_modules=["proj"]), "target_modules ['proj']"),
        (lambda c: c.update(study="huge"), "study: 'huge' is not a key of studies"),
        (lambda c: c.update(by_dataset={"cifar11": {}}), "by_dataset: unknown dataset 'cifar11'"),
        (
            lambda c: c.update(by_dataset={"digits": {"methods": {"lora": {"dropout": 2.0}}}}),
            "by_dataset.digits.methods: 'lora_r4': lora_r4: dropout must be in [0, 1), got 2.0",
        ),
        (lambda c: c.update(by_dataset={"digits": {"train": {"epochs": 0}}}), "by_dataset.<dataset>.train"),
        (lambda c: c["models"]["vit_w64_d4"].update(img_size=18), "not a multiple of patch_size"),
        (lambda c: c["models"]["vit_w64_d4"]["backbone"].update(source="hub"), "hub"),
        (lambda c: c["studies"]["demo"].update(seeds=["a"]), "'a'"),
        (lambda c: c["train"].update(epoch=3), "epoch"),
        (lambda c: c.update(checkpoint_every=-5), "checkpoint_every"),
        (lambda c: c.update(checkpoint_every=2.5), "2.5"),
        (lambda c: c["resources"].update(gpu=-1), "-1 is less than the minimum of 0"),
        (
            lambda c: c["resources"]["models"].update(vit_huge={"mem_mb": 1, "runtime": 1}),
            "unknown model 'vit_huge'",
        ),
        (
            lambda c: c["resources"]["models"]["vit_w64_d4"].update(runtime=0),
            "instance['resources']['models']['vit_w64_d4']['runtime']",
        ),
        (lambda c: c["resources"]["models"]["vit_w64_d4"].pop("mem_mb"), "'mem_mb' is a required property"),
        (lambda c: c["resources"]["datasets"].update(cifar11={"runtime": 2}), "unknown dataset 'cifar11'"),
        (
            lambda c: c["resources"]["datasets"]["glyphs"].update(runtime=-2),
            "instance['resources']['datasets']['glyphs']['runtime']",
        ),
        (lambda c: c["resources"]["datasets"]["glyphs"].update(mem=2), "'mem'"),
    ],
)
def test_bad_config_is_rejected_naming_key_and_value(demo_config, edit, message):
    bad = copy.deepcopy(demo_config)
    edit(bad)
    with pytest.raises(ConfigError) as err:
        study_config.load(bad)
    assert message in str(err.value)


@pytest.mark.parametrize("value", [-1, 2.5, "10", True])
def test_checkpoint_every_is_checked_naming_key_and_value(demo_config, value):
    bad = dict(demo_config, checkpoint_every=value)
    with pytest.raises(ConfigError, match=f"checkpoint_every: must be an integer >= 0.*got {value!r}"):
        study_config.validate(bad)


def test_checkpoint_every_defaults_and_stays_out_of_run_configs(tiny_config, demo_config):
    assert tiny_config["checkpoint_every"] == 500  # the schema's default
    run = study_config.resolve_run(demo_config, "vit_w64_d4", "digits", "lora_r8", 0).to_dict()
    assert "checkpoint_every" not in str(run)  # changing it must rerun no job


def test_a_config_without_resources_asks_for_the_schema_defaults_and_no_gpu():
    config = yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text())
    del config["resources"]
    study_config.load(config)
    assert config["resources"] == {
        "gpu": 0,
        "runtime_margin": 2.5,
        "min_runtime": 8,
        "default": {"mem_mb": 4000, "runtime": 60},
        "models": {},
        "datasets": {},
    }
    run = study_config.resolve_run(config, "deit_tiny", "digits", "lora_r8", 0)
    assert compute.job_resources(config, run) == {"mem_mb": 4000, "runtime": 60, "gpu": 0}
    assert config["compute"] == {"gpu_tflops": 250}


def test_the_demo_is_a_cpu_study(demo_config):
    run = study_config.resolve_run(demo_config, "vit_w64_d4", "digits", "full", 0)
    assert compute.job_resources(demo_config, run)["gpu"] == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("gpu_tflops", 0, "compute.gpu_tflops: must be a number > 0"),
        ("gpu_tflops", -250, "compute.gpu_tflops: must be a number > 0"),
        ("gpu_tflops", "fast", "compute.gpu_tflops: must be a number > 0"),
        ("gpu_tflops", True, "compute.gpu_tflops: must be a number > 0"),
        ("runtime_margin", 0.5, "resources.runtime_margin: must be a number >= 1"),
        ("runtime_margin", -3, "resources.runtime_margin: must be a number >= 1"),
        ("min_runtime", 0, "resources.min_runtime: must be a number >= 1"),
    ],
)
def test_a_throughput_or_runtime_margin_out_of_range_is_refused_naming_the_key(
    demo_config, key, value, message
):
    section = "compute" if key == "gpu_tflops" else "resources"
    bad = copy.deepcopy(demo_config)
    bad[section][key] = value
    with pytest.raises(ConfigError, match=f"{message}.*got {value!r}"):
        study_config.validate(bad)
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=key):  # the schema refuses it first when the workflow loads
        study_config.load(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (
            "augment",
            "mix_prob",
            1.5,
            "datasets.digits: augment.mix_prob must be a probability in [0, 1], got 1.5",
        ),
        ("augment", "mix_prob", -0.5, "datasets.digits: augment.mix_prob must be a probability in [0, 1]"),
        (
            "augment",
            "cutmix_switch_prob",
            2,
            "augment.cutmix_switch_prob must be a probability in [0, 1], got 2",
        ),
        ("augment", "erasing_prob", -0.25, "augment.erasing_prob must be a probability in [0, 1], got -0.25"),
        ("augment", "cutmix_alpha", -1.0, "augment.cutmix_alpha must be >= 0, got -1.0"),
        ("augment", "randaugment_magnitude", 31, "augment.randaugment_magnitude must be in [0, 30], got 31"),
        ("augment", "randaugment_num_ops", -2, "augment.randaugment_num_ops must be >= 0, got -2"),
        ("train", "drop_path_rate", 1.0, "train.drop_path_rate must be in [0, 1), got 1.0"),
        ("train", "drop_path_rate", -0.1, "train.drop_path_rate must be in [0, 1), got -0.1"),
        ("train", "label_smoothing", 1.0, "train.label_smoothing must be in [0, 1), got 1.0"),
        ("full", "ema_decay", 1.0, "full: ema_decay must be in [0, 1), got 1.0"),
        ("lora", "ema_decay", -0.9, "lora_r4: ema_decay must be in [0, 1), got -0.9"),
        ("adalora", "ema_decay", 0.999, "adalora_r8: ema_decay must be 0, got 0.999"),
    ],
)
def test_a_recipe_value_out_of_range_is_refused_naming_key_and_value(
    demo_config, section, key, value, message
):
    def edit(config):
        if section == "augment":
            config["datasets"]["digits"]["augment"][key] = value
        elif section == "train":
            config["train"][key] = value
        else:
            config["methods"][section][key] = value

    bad = copy.deepcopy(demo_config)
    edit(bad)
    with pytest.raises(ConfigError) as err:
        study_config.validate(bad)
    assert message in str(err.value)
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    edit(raw)
    with pytest.raises(ConfigError, match=key):  # the schema refuses most of them first, naming the key
        study_config.load(raw)


def test_the_recipe_keys_default_off(demo_config):
    run = study_config.resolve_run(demo_config, "vit_w64_d4", "digits", "full", 0)
    assert run.train.drop_path_rate == 0.0 and run.train.label_smoothing == 0.0
    assert not run.augment.mixes and not run.augment.randaugment and run.augment.erasing_prob == 0.0
    assert all(
        study_config.resolve_run(demo_config, "vit_w64_d4", "digits", m, 0).method.ema_decay == 0.0
        for m in study_config.study_methods(demo_config)
    )


def raw_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_command_line_values_read_as_yaml_reads_them():
    """Snakemake's --config reads ``studies={demo: {partial: true}}`` with YAML's base loader:
    every value inside the braces a string. They get the types config.yaml would give them."""
    command_line = {"studies": {"demo": {"partial": "true", "seeds": ["3", "4", "5"]}}, "threads": 2}
    config = raw_config()
    config["studies"]["demo"].update(command_line["studies"]["demo"])
    config["threads"] = 2
    study_config.load(config, command_line=command_line)
    assert config["studies"]["demo"]["partial"] is True
    assert config["studies"]["demo"]["seeds"] == ["3", "4", "5"] or config["studies"]["demo"]["seeds"] == [
        3,
        4,
        5,
    ]


def test_a_bad_command_line_value_names_the_command_line_not_config_yaml():
    command_line = {"train": {"epochs": "many"}}
    config = raw_config()
    config["train"]["epochs"] = "many"
    with pytest.raises(ConfigError) as err:
        study_config.load(config, command_line=command_line)
    message = str(err.value)
    assert message.startswith("the command line (--config) sets train.epochs: 'many' is not of type")
    config = raw_config()
    config["train"]["epochs"] = "many"  # the same value, from config.yaml
    with pytest.raises(ConfigError) as err:
        study_config.load(config)
    assert str(err.value).startswith("config.yaml at train.epochs: 'many' is not of type")


def test_a_quoted_string_in_a_configfile_stays_a_string_and_a_config_value_is_typed(tmp_path):
    """Only --config values are re-read as YAML: a --configfile is YAML already."""
    import subprocess

    from conftest import snakemake_command

    config = raw_config()
    config["studies"]["demo"]["title"] = "2024"  # quoted in the file: a string, as the schema wants
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = snakemake_command(
        tmp_path / "w", tmp_path / "config.yaml", "-n", "--config", "studies={demo: {partial: true}}"
    )
    result = subprocess.run(
        [*cmd, "--", "resources/data/digits/manifest.json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
