"""The study config: validation at workflow load time, and one resolved config per run.

``config.yaml`` is checked twice before any job runs: against the JSON schema (types, required
keys, defaults; via ``snakemake.utils.validate``), then semantically here (every method name
parses, every model and dataset is known, every hyperparameter is valid). Each error names the
key and the value.

This module imports neither torch nor timm, so that Snakemake parses the workflow quickly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitpeft import device as devices
from vitpeft.architecture import HF_MODEL_TYPES, TIMM_VIT, BlockLayout, hf_layout
from vitpeft.convergence import ConvergenceCriterion
from vitpeft.data.sources import FILE_KINDS, check_kind, check_options, image_folder_size
from vitpeft.methods import METHODS, config_from_dict, method_config, parse_method_name
from vitpeft.methods.base import MethodConfig
from vitpeft.quant import INT_BITS, check_groups

SCHEMA = Path(__file__).parent / "schemas" / "config.schema.yaml"
TRANSFER_BASELINE = "scratch"  # random initialization, the transfer check's baseline
TRANSFER_REFERENCE = "full"  # full fine-tuning of the pretrained backbone, compared with it
TUNABLE_FAMILIES = tuple(METHODS)  # every family's learning rate may be tuned (vitpeft.tune)


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and the value."""


MODEL_ARCHS = {
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_w64_d4": "vit_tiny_patch16_224",  # with MODEL_KWARGS below: a 0.2 M-parameter ViT
}
# The arguments that make a named model what its name says, on top of its timm architecture
# (the config's ``kwargs`` go on top of these).
MODEL_KWARGS = {"vit_w64_d4": {"embed_dim": 64, "depth": 4, "num_heads": 2}}
# Embedding width of each architecture; its blocks' Linear layers take this width, and fc2 takes
# width * mlp_ratio. Known here, without torch, so that methods can check shapes at config time.
MODEL_WIDTHS = {"deit_tiny": 192, "deit_small": 384, "vit_small": 384, "vit_w64_d4": 64}
MODEL_DEPTHS = {"deit_tiny": 12, "deit_small": 12, "vit_small": 12, "vit_w64_d4": 4}  # transformer blocks
RANDAUGMENT_BINS = 31  # torchvision's default num_magnitude_bins: magnitudes 0..30
# pretrain, timm, file: a timm architecture of MODEL_ARCHS; hf: a transformers ViT or DeiT
BACKBONE_SOURCES = ("pretrain", "timm", "file", "hf")


@functools.cache
def hf_config(model_id: str) -> dict[str, Any]:
    """The ``config.json`` of a transformers model: a local ``save_pretrained`` folder, or a hub
    id (then fetched from the hub, or huggingface_hub's cache)."""
    local = Path(model_id) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(model_id, "config.json")).read_text())


@functools.cache
def timm_vit(arch: str, img_size: int, patch_size: int, kwargs_json: str) -> tuple[int, int, int, int, int]:
    """``(width, depth, hidden, extra_tokens, in_chans)`` of a timm architecture (with its
    pretrained tag, if any), built without weights on the meta device.

    Raises:
        ValueError: naming ``arch``, when timm does not know it, the tag has no weights, or its
            model is not a VisionTransformer whose blocks have timm's ViT layout.
    """
    import timm
    import torch
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(arch):
        raise ValueError(f"arch: timm knows no model {arch!r} (timm.list_models('vit_*') lists the ViTs)")
    if "." in arch and not timm.list_pretrained(arch):
        raise ValueError(f"arch: timm has no pretrained tag {arch!r} (timm.list_pretrained lists them)")
    with torch.device("meta"):
        default = timm.create_model(arch, pretrained=False)
        if not isinstance(default, VisionTransformer):
            raise ValueError(f"arch: {arch!r} is a {type(default).__name__}, not a timm VisionTransformer")
        try:
            model = timm.create_model(
                arch, pretrained=False, img_size=img_size, patch_size=patch_size, **json.loads(kwargs_json)
            )
        except (TypeError, ValueError, RuntimeError, AssertionError) as err:
            raise ValueError(
                f"arch: timm cannot build {arch!r} at img_size {img_size}, patch_size {patch_size} ({err})"
            ) from err
    block = model.blocks[0]
    linears = {name for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = sorted(set(TIMM_VIT.paths) - linears)
    if missing:
        raise ValueError(
            f"arch: {arch!r} blocks lack timm's ViT Linear layers {missing} (they have {sorted(linears)})"
        )
    return (
        model.embed_dim,
        len(model.blocks),
        block.mlp.fc1.out_features,
        model.num_prefix_tokens,
        model.patch_embed.proj.in_channels,
    )


@dataclass(frozen=True)
class Geometry:
    """What the FLOP count and the shape checks need to know of a ViT, without building it.

    Attributes:
        width: embedding width (every block Linear takes it, but the MLP's second one).
        depth: transformer blocks.
        hidden: the MLP's inner width.
        extra_tokens: tokens besides the patches (class token; DeiT's distillation token).
        in_chans: input channels.
    """

    width: int
    depth: int
    hidden: int
    extra_tokens: int
    in_chans: int


@dataclass(frozen=True)
class ModelSpec:
    """One ``models:`` entry of the config.

    Attributes:
        name: the study's name for the model: a key of :data:`MODEL_ARCHS` for a timm model, any
            name for a transformers one (``backbone.source: hf``).
        img_size: input side in pixels (a transformers model's must be its config's).
        patch_size: patch side in pixels (a transformers model's must be its config's).
        backbone: where the weights come from: ``{"source": "pretrain", "dataset": ...}``,
            ``{"source": "timm"}``, ``{"source": "file", "path": ...}`` or
            ``{"source": "hf", "id": <hub id or save_pretrained folder>}``.
        kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``depth`` in tests).
        timm_arch: any timm VisionTransformer by name, with a pretrained tag if wanted (the
            config's ``arch``, e.g. ``vit_base_patch16_224.augreg_in21k``); then ``name`` is free.
    """

    name: str
    img_size: int = 224
    patch_size: int = 16
    backbone: dict[str, Any] = field(default_factory=lambda: {"source": "timm"})
    kwargs: dict[str, Any] = field(default_factory=dict)
    timm_arch: str | None = None

    def __post_init__(self):
        if self.backbone.get("source") not in BACKBONE_SOURCES:
            raise ValueError(
                f"{self.name}: backbone.source must be one of {BACKBONE_SOURCES}, got {self.backbone.get('source')!r}"
            )
        if self.is_hf:
            if self.timm_arch:
                raise ValueError(
                    f"{self.name}: arch is timm's; a transformers model (backbone.source hf) takes its id"
                )
            self._check_hf()
        elif self.timm_arch:
            self._timm_vit()  # fails naming the arch
        elif self.name not in MODEL_ARCHS:
            raise ValueError(
                f"unknown model {self.name!r}; known: {sorted(MODEL_ARCHS)} (or arch: <any timm ViT>, "
                "or backbone.source hf)"
            )
        if self.img_size % self.patch_size:
            raise ValueError(
                f"{self.name}: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )

    def _timm_vit(self) -> tuple[int, int, int, int, int]:
        return timm_vit(
            self.timm_arch, self.img_size, self.patch_size, json.dumps(self.create_kwargs, sort_keys=True)
        )

    @property
    def is_hf(self) -> bool:
        return self.backbone.get("source") == "hf"

    def _check_hf(self) -> None:
        if not self.backbone.get("id"):
            raise ValueError(f"{self.name}: backbone.id (a hub id or a save_pretrained folder) is required")
        if self.kwargs:
            raise ValueError(f"{self.name}: kwargs are timm's; a transformers model takes its config's")
        hf = hf_config(self.backbone["id"])
        if hf.get("model_type") not in HF_MODEL_TYPES:
            raise ValueError(
                f"{self.name}: unknown architecture {hf.get('architectures') or hf.get('model_type')!r} "
                f"in {self.backbone['id']}; supported model_type: {list(HF_MODEL_TYPES)}"
            )
        for key, theirs in (("img_size", "image_size"), ("patch_size", "patch_size")):
            if getattr(self, key) != hf[theirs]:
                raise ValueError(
                    f"{self.name}: {key} {getattr(self, key)} differs from {theirs} {hf[theirs]} "
                    f"of {self.backbone['id']}; set {key}: {hf[theirs]}"
                )

    @property
    def arch(self) -> str:
        """timm's architecture name, or the transformers class of an ``hf`` model."""
        if self.is_hf:
            hf = hf_config(self.backbone["id"])
            return (hf.get("architectures") or [hf["model_type"]])[0]
        return self.timm_arch or MODEL_ARCHS[self.name]

    @property
    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model(self.arch, ...)``: the model's own, then ``kwargs``."""
        return {**MODEL_KWARGS.get(self.name, {}), **self.kwargs}

    @property
    def layout(self) -> BlockLayout:
        """The layout of this model's transformer blocks (which Linear plays which role)."""
        return hf_layout() if self.is_hf else TIMM_VIT

    def geometry(self) -> Geometry:
        if self.is_hf:
            hf = hf_config(self.backbone["id"])
            extra = 2 if hf["model_type"] == "deit" else 1  # DeiT adds a distillation token
            return Geometry(
                hf["hidden_size"],
                hf["num_hidden_layers"],
                hf["intermediate_size"],
                extra,
                hf.get("num_channels", 3),
            )
        if self.timm_arch:
            return Geometry(*self._timm_vit())
        kwargs = self.create_kwargs
        width = kwargs.get("embed_dim", MODEL_WIDTHS[self.name])
        return Geometry(
            width,
            kwargs.get("depth", MODEL_DEPTHS[self.name]),
            int(width * kwargs.get("mlp_ratio", 4.0)),
            int(kwargs.get("class_token", True)) + kwargs.get("reg_tokens", 0),
            kwargs.get("in_chans", 3),
        )

    def block_widths(self) -> dict[str, int]:
        """``in_features`` of each Linear inside a transformer block, by block-relative path."""
        geometry = self.geometry()
        return {path: shape[0] for path, shape in self.layout.shapes(geometry.width, geometry.hidden).items()}


@dataclass(frozen=True)
class AugmentConfig:
    """Random affine augmentation, drawn independently for every image of a batch.

    Each parameter means what torchvision means by it: the view is RandomResizedCrop's (at aspect
    ratio 1, centred), then moved as RandomAffine moves it (``vitpeft.data.pipeline.affine_views``).

    Attributes:
        scale: range of the view's area, as a fraction of the image's area (RandomResizedCrop's
            ``scale``), drawn uniformly: below 1 a crop zoomed in to fill the input (0.64 shows
            the central 80% of the side), above 1 a view wider than the image, which then shrinks
            onto a black border. (1.0, 1.0) = the whole image fills the input.
        translate: largest shift of the content along each axis, as a fraction of the side
            (RandomAffine's ``translate``): 0.125 moves a 32-pixel image by up to 4 pixels.
        hflip: flip left-right with probability 0.5 (wrong for digits and text).
        randaugment: torchvision's RandAugment on every training image, its own ops each, on
            the uint8 image before the affine view (``vitpeft.data.augment.BatchRandAugment``).
        randaugment_num_ops: RandAugment's ops per image (torchvision's ``num_ops``).
        randaugment_magnitude: their strength, in torchvision's 31 bins: 0 (none) to 30 (each op's
            largest). timm's ``rand-m9`` is 9 of its 10, so 27 here.
        mixup_alpha: mix pairs of training images and their labels with a Beta(alpha, alpha)
            weight (torchvision's MixUp); 0 turns it off.
        cutmix_alpha: paste a box of another image of the batch, of area drawn from
            Beta(alpha, alpha), and mix the labels by area (torchvision's CutMix); 0 turns it off.
        mix_prob: probability that a batch is mixed at all, when MixUp or CutMix is on (timm's
            ``mixup_prob``).
        cutmix_switch_prob: probability that a mixed batch gets CutMix rather than MixUp, when
            both are on (timm's ``mixup_switch_prob``).
        erasing_prob: probability that an image gets one random box of its normalized pixels
            replaced by normal noise (timm's RandomErasing, mode ``pixel``, as DeiT's ``reprob``;
            ``vitpeft.data.augment.random_erasing``).
    """

    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    hflip: bool = False
    randaugment: bool = False
    randaugment_num_ops: int = 2
    randaugment_magnitude: int = 9
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    cutmix_switch_prob: float = 0.5
    erasing_prob: float = 0.0

    def __post_init__(self):
        low, high = self.scale
        if not 0.0 < low <= high:
            raise ValueError(f"augment.scale must satisfy 0 < low <= high, got {self.scale}")
        if not 0.0 <= self.translate < 1.0:
            raise ValueError(f"augment.translate must be in [0, 1), got {self.translate}")
        for key in ("mixup_alpha", "cutmix_alpha"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"augment.{key} must be >= 0, got {getattr(self, key)!r}")
        for key in ("mix_prob", "cutmix_switch_prob", "erasing_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"augment.{key} must be a probability in [0, 1], got {getattr(self, key)!r}")
        if self.randaugment_num_ops < 0:
            raise ValueError(f"augment.randaugment_num_ops must be >= 0, got {self.randaugment_num_ops!r}")
        if not 0 <= self.randaugment_magnitude <= RANDAUGMENT_BINS - 1:
            raise ValueError(
                f"augment.randaugment_magnitude must be in [0, {RANDAUGMENT_BINS - 1}], got {self.randaugment_magnitude!r}"
            )

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (MixUp or CutMix), so that targets become soft."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0


@dataclass(frozen=True)
class TrainConfig:
    """The optimization budget, shared by every method of a study.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per optimizer step.
        eval_batch_size: images per forward pass at evaluation.
        warmup_epochs: linear warmup length before the cosine decay.
        grad_clip: max global gradient norm (0 disables clipping).
        label_smoothing: cross-entropy label smoothing (of mixed targets too).
        drop_path_rate: stochastic depth: the largest probability, at the last block, that a
            block's residual branch is skipped for an image (timm's ``drop_path_rate``, rising
            linearly from 0 at the first block). Training only; it holds no weights.
        accumulation_steps: micro-batches per optimizer step (same effective batch, less memory).
        compile: train through ``torch.compile(model)`` (worth it on a GPU for long runs).
        precision: ``auto``, ``bf16``, ``fp16`` or ``fp32`` (:func:`vitpeft.device.training_precision`:
            auto is bf16 where the device has it, else fp16 with a gradient scaler on CUDA, else fp32).
    """

    epochs: int = 5
    batch_size: int = 32
    eval_batch_size: int = 256
    warmup_epochs: float = 0.5
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    drop_path_rate: float = 0.0
    accumulation_steps: int = 1
    compile: bool = False
    precision: str = "auto"

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"train.precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if min(self.epochs, self.batch_size, self.eval_batch_size, self.accumulation_steps) < 1:
            raise ConfigError(f"epochs, batch sizes and accumulation_steps must be >= 1, got {self}")
        for key in ("label_smoothing", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"train.{key} must be in [0, 1), got {getattr(self, key)!r}")


@dataclass(frozen=True)
class ExportConfig:
    """The ``export:`` section: how every run is merged, exported and checked (``vitpeft.export``).

    Logits are compared on the whole (held-out) test split. A comparison passes when the largest
    gap, relative to the largest reference logit, is within its tolerance, and no prediction
    flips where the reference's top-1 margin is wider than that tolerance (a genuine near-tie
    may flip; a real disagreement may not).

    Attributes:
        logit_rtol: tolerance of merges and of ONNX Runtime against PyTorch.
        int8_kernel_rtol: tolerance of a merged ``qlora8`` model against the unmerged one, which
            bitsandbytes runs through LLM.int8(): activations cast to fp16 and quantized to int8.
        fp16_zero_rtol: tolerance of QA-LoRA's merged model against the unmerged one. The merge
            is exact but stores every shifted zero in fp16 again, a relative rounding of up to
            2^-11 (4.9e-4) each; the default is about twice that (the demo's merge: 1.3e-4).
        requantize_bits, requantize_group_size: the INT-N format that every method other than
            QA-LoRA is quantized to after its float merge (the naive route).
    """

    logit_rtol: float = 1e-4
    int8_kernel_rtol: float = 0.05
    fp16_zero_rtol: float = 1e-3
    requantize_bits: int = 4
    requantize_group_size: int = 16

    def __post_init__(self):
        if self.requantize_bits not in INT_BITS:
            raise ValueError(
                f"export.requantize_bits must be one of {INT_BITS}, got {self.requantize_bits!r}"
            )
        if not self.requantize_group_size > 0:
            raise ValueError(f"export.requantize_group_size must be > 0, got {self.requantize_group_size!r}")

    def check_widths(self, in_features: dict[str, int], model: str) -> None:
        check_groups(in_features, self.requantize_group_size, f"export.requantize_group_size on {model}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on; saved next to its results as ``config.json``."""

    model: ModelSpec
    dataset: str
    method: MethodConfig
    seed: int
    train: TrainConfig
    augment: AugmentConfig

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["model"]["timm_arch"] is None:  # a named model: its name says its architecture
            del data["model"]["timm_arch"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        augment = dict(data["augment"])
        augment["scale"] = tuple(augment["scale"])
        return cls(
            model=ModelSpec(**data["model"]),
            dataset=data["dataset"],
            method=config_from_dict(data["method"]),
            seed=int(data["seed"]),
            train=TrainConfig(**data["train"]),
            augment=AugmentConfig(**augment),
        )


def study(config: dict[str, Any]) -> dict[str, Any]:
    """The selected study's section (``config["studies"][config["study"]]``)."""
    return config["studies"][config["study"]]


def study_methods(config: dict[str, Any]) -> list[str]:
    """The study's methods, plus the random-init baseline when the transfer check is on."""
    methods = list(study(config)["methods"])
    if study(config).get("transfer_check") and TRANSFER_BASELINE not in methods:
        methods.append(TRANSFER_BASELINE)
    return methods


def transfer_seeds(config: dict[str, Any]) -> list[int]:
    """The seeds the transfer check compares on: the study's, and any more it names (none without
    the check)."""
    selected = study(config)
    if not selected.get("transfer_check"):
        return []
    return sorted(selected.get("transfer_seeds", selected["seeds"]))


def extra_transfer_seeds(config: dict[str, Any]) -> list[int]:
    """The transfer check's seeds that only its two methods train (not the study's seeds)."""
    return [seed for seed in transfer_seeds(config) if seed not in study(config)["seeds"]]


def vtab_tasks(config: dict[str, Any]) -> dict[str, str]:
    """The study's VTAB-1k datasets: dataset name -> task name (empty for a study without one)."""
    specs = {name: config["datasets"][name] for name in study(config)["datasets"]}
    return {name: spec["options"]["task"] for name, spec in specs.items() if spec["kind"] == "vtab1k"}


def model_spec(config: dict[str, Any], model: str) -> ModelSpec:
    return spec_of_entry(model, config["models"][model])


def spec_of_entry(model: str, entry: dict[str, Any]) -> ModelSpec:
    """The :class:`ModelSpec` of one ``models:`` entry (its ``arch`` is the spec's ``timm_arch``)."""
    entry = dict(entry)
    if "arch" in entry:
        entry["timm_arch"] = entry.pop("arch")
    return ModelSpec(name=model, **entry)


def prepared_dataset_spec(config: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The ``datasets:`` entry that rule prepare_data builds from: a file kind's
    ``options.image_size`` defaults to the input size of the selected study's models.

    Raises:
        ConfigError: the models take different sizes, so the size must be stated.
    """
    spec = config["datasets"][dataset]
    options = spec.get("options", {})
    if spec["kind"] not in FILE_KINDS or "image_size" in options:
        return spec
    sizes = sorted({model_spec(config, m).img_size for m in study(config)["models"]})
    if len(sizes) != 1:
        raise ConfigError(
            f"datasets.{dataset}.options.image_size: required, since the study's models take sizes {sizes}"
        )
    return {**spec, "options": {**options, "image_size": sizes[0]}}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, recursively for nested dicts; neither is modified."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def apply_study_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """Merge the selected study's ``overrides`` into ``config`` in place (e.g. models at 224 px)."""
    overrides = config.get("studies", {}).get(config.get("study"), {}).get("overrides", {})
    config.update(merged(config, overrides))
    return config


def resolve_run(config: dict[str, Any], model: str, dataset: str, method: str, seed: int) -> RunConfig:
    """The complete, validated config of one run of the study.

    ``by_dataset.<dataset>`` may override the training budget (``train``) and the method
    hyperparameters (``methods``) for one dataset, e.g. more epochs for a harder one.
    """
    per_dataset = config.get("by_dataset", {}).get(dataset, {})
    return RunConfig(
        model=model_spec(config, model),
        dataset=dataset,
        method=method_config(method, merged(config.get("methods", {}), per_dataset.get("methods", {}))),
        seed=int(seed),
        train=TrainConfig(**merged(config["train"], per_dataset.get("train", {}))),
        augment=augment_config(config["datasets"][dataset]),
    )


def augment_config(dataset_spec: dict[str, Any]) -> AugmentConfig:
    """A ``datasets:`` entry's ``augment`` section as an :class:`AugmentConfig`."""
    augment = dict(dataset_spec.get("augment", {}))
    if "scale" in augment:
        augment["scale"] = tuple(augment["scale"])
    return AugmentConfig(**augment)


def training_recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The regularizers and augmentation the study's runs train with, for the paper's setup.

    Returns:
        ``train``: the ``train`` section with its defaults (label smoothing, drop path, ...);
        ``augment``: one entry per distinct augmentation, ``{"datasets": [...], "augment": {...}}``
        (the fields of :class:`AugmentConfig` and ``mixes``); ``ema``: family -> weight EMA decay,
        for the families that keep one.
    """
    groups: list[dict[str, Any]] = []
    for name in study(config)["datasets"]:
        augment = augment_config(config["datasets"][name])
        fields = {**dataclasses.asdict(augment), "mixes": augment.mixes}
        same = [group for group in groups if group["augment"] == fields]
        if same:
            same[0]["datasets"].append(name)
        else:
            groups.append({"datasets": [name], "augment": fields})
    return {
        "train": dataclasses.asdict(TrainConfig(**config["train"])),
        "augment": groups,
        "ema": {
            family: hp["ema_decay"]
            for family, hp in config.get("methods", {}).items()
            if hp.get("ema_decay", 0) > 0
        },
    }


def pretrain_run(config: dict[str, Any], model: str) -> RunConfig:
    """The run config of the pretrain rule for ``model``: full training from random init."""
    dataset = config["models"][model]["backbone"]["dataset"]
    run = resolve_run(config, model, dataset, TRANSFER_BASELINE, config["pretrain"]["seed"])
    pretrain = {
        k: v for k, v in config["pretrain"].items() if k not in ("seed", "lr", "weight_decay", "threads")
    }
    method = dataclasses.replace(
        run.method, lr=config["pretrain"]["lr"], weight_decay=config["pretrain"]["weight_decay"]
    )
    return dataclasses.replace(run, train=TrainConfig(**pretrain), method=method)


# The sections the paper's setup is written from, beside the selected study and its own models and
# datasets. Scheduling (resources, threads, device, checkpoint_every), typesetting (paper), the
# classical baselines (their records are the tables' inputs) and the other studies are left out:
# editing them rewrites no table.
SETUP_SECTIONS = ("train", "by_dataset", "pretrain", "methods", "tune", "export", "convergence", "compute")


def results_view(config: dict[str, Any]) -> dict[str, Any]:
    """The part of ``config`` the setup section is written from (:data:`SETUP_SECTIONS`)."""
    selected = study(config)
    backbone_datasets = {config["models"][m]["backbone"].get("dataset") for m in selected["models"]}
    return {
        "study": config["study"],
        "studies": {config["study"]: selected},
        "models": {m: config["models"][m] for m in selected["models"]},
        "datasets": {
            name: spec
            for name, spec in config["datasets"].items()
            if name in selected["datasets"] or name in backbone_datasets
        },
        **{key: config[key] for key in SETUP_SECTIONS if key in config},
    }


def grids(config: dict[str, Any]) -> dict[str, list[float]]:
    """``tune.grids``: the learning rates tried per family (no entry: the family is not tuned)."""
    return config.get("tune", {}).get("grids", {})


def check_grids(config: dict[str, Any]) -> None:
    """Each ``tune.grids`` entry is a known family's non-empty list of positive numbers.

    Raises:
        ConfigError: naming the key and the value.
    """
    for family, grid in grids(config).items():
        key = f"tune.grids.{family}"
        if family not in TUNABLE_FAMILIES:
            raise ConfigError(f"{key}: not a tunable method family; tunable: {list(TUNABLE_FAMILIES)}")
        if not isinstance(grid, list) or not grid:
            raise ConfigError(f"{key}: must be a non-empty list of learning rates, got {grid!r}")
        for lr in grid:
            if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
                raise ConfigError(f"{key}: every learning rate must be a number > 0, got {lr!r} in {grid!r}")
        if len(set(grid)) != len(grid):
            raise ConfigError(f"{key}: a learning rate is listed twice in {grid!r}")
        if len(grid) < 2:
            raise ConfigError(
                f"{key}: a grid brackets a rate, so it needs at least 2 rates, got {grid!r} "
                f"(to fix a rate without tuning, drop the grid and set methods.{family}.lr)"
            )


def check_compute(config: dict[str, Any]) -> None:
    """The throughput that turns FLOPs into GPU-hours, and how runtime requests follow from them."""
    compute, resources = config.get("compute", {}), config["resources"]
    checks = {  # key: (value, least value, the rule in words); zero is never valid
        "compute.gpu_tflops": (compute.get("gpu_tflops"), 0, "> 0 (sustained TFLOP/s of one GPU)"),
        "resources.runtime_margin": (resources.get("runtime_margin"), 1, ">= 1 (request / estimate)"),
        "resources.min_runtime": (resources.get("min_runtime"), 1, ">= 1 (minutes)"),
    }
    for key, (value, least, rule) in checks.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < least or value == 0:
            raise ConfigError(f"{key}: must be a number {rule}, got {value!r}")


def check_device(config: dict[str, Any], method: str) -> None:
    """Refuse ``method`` if the configured ``device`` cannot train it, naming both.

    ``auto`` is checked against every device it may pick (:func:`vitpeft.device.candidates`).
    """
    requested = config.get("device", "auto")
    family, _ = parse_method_name(method)
    for device_type in devices.candidates(requested):
        reason = devices.unsupported(family, device_type)
        if reason:
            picks = "" if requested == device_type else f" (which may pick {device_type} here)"
            raise ConfigError(
                f"device: {requested!r}{picks}: method {method!r} cannot train on {device_type}: {reason}"
            )


def cell_plan(config: dict[str, Any], method: str, dataset: str) -> str:
    """One line on what the cell target ``results/<method>_<dataset>`` trains: the selected
    study's models (name, input size, architecture) and seeds, and, for a dataset that study does
    not list, the studies that do."""
    selected = study(config)
    specs = {name: model_spec(config, name) for name in selected["models"]}
    models = ", ".join(
        f"{name} ({spec.img_size} px, {spec.arch} at width {spec.geometry().width}, depth {spec.geometry().depth})"
        for name, spec in specs.items()
    )
    line = (
        f"vitpeft: results/{method}_{dataset} trains the {config['study']} study's {models} "
        f"at seeds {selected['seeds']}"
    )
    if dataset in selected["datasets"]:
        return line
    listing = sorted(name for name, entry in config["studies"].items() if dataset in entry["datasets"])
    switch = " or ".join(f"--config study={name}" for name in listing)
    return f"{line}; {dataset} is not in that study" + (f": for its models add {switch}" if listing else "")


def check_target_names(
    config: dict[str, Any], dataset: str | None = None, model: str | None = None, method: str | None = None
) -> None:
    """Check the names a requested target carries (e.g. ``results/lora_r8_cifar11``) as
    :func:`validate` checks the study's: a dataset or model the config defines, and a method that
    parses, is valid with the config's hyperparameters and can train on its device.

    Raises:
        ConfigError: naming the value and what is known.
    """
    for section, name in (("datasets", dataset), ("models", model)):
        if name is not None and name not in config[section]:
            raise ConfigError(
                f"requested target: unknown {section[:-1]} {name!r}; the {section} section defines {sorted(config[section])}"
            )
    if method is not None:
        try:
            method_config(method, config.get("methods", {}))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"requested target: method {method!r}: {err}") from err
        check_device(config, method)


def _check_files(config: dict[str, Any], dataset: str) -> None:
    """A study dataset that the workflow sizes from its files (an image folder, a Hugging Face
    dataset) can be read now; VTAB-1k's sizes are known, its folder is read when prepared."""
    spec = config["datasets"][dataset]
    try:
        if spec["kind"] == "image_folder":
            image_folder_size(str(spec["options"]["root"]))
        elif spec["kind"] == "hf_dataset":
            from vitpeft.data.sizes import kind_size

            kind_size(spec)
    except ValueError as err:
        where = f"datasets.{dataset}." if str(err).startswith("options.") else f"datasets.{dataset}: "
        raise ConfigError(f"{where}{err}") from err
    prepared_dataset_spec(config, dataset)


def validate(config: dict[str, Any]) -> None:
    """Check what a schema cannot: names parse, references resolve, values are in range.

    Raises:
        ConfigError: naming the offending key and value.
    """
    if config["study"] not in config["studies"]:
        raise ConfigError(f"study: {config['study']!r} is not a key of studies ({sorted(config['studies'])})")
    key = f"studies.{config['study']}"
    selected = study(config)
    if "transfer_seeds" in selected:
        if not selected.get("transfer_check"):
            raise ConfigError(f"{key}.transfer_seeds: given, but transfer_check is off")
        missing = sorted(set(selected["seeds"]) - set(selected["transfer_seeds"]))
        if missing:
            raise ConfigError(
                f"{key}.transfer_seeds: {selected['transfer_seeds']} lacks the study's seed(s) {missing}; "
                "the transfer check compares on every study seed and may add more"
            )
    for model in selected["models"]:
        if model not in config["models"]:
            raise ConfigError(
                f"{key}.models: unknown model {model!r}; the models section defines {sorted(config['models'])}"
            )
        try:
            spec = model_spec(config, model)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"models.{model}: {err}") from err
        backbone = spec.backbone
        if backbone["source"] == "pretrain" and backbone.get("dataset") not in config["datasets"]:
            raise ConfigError(f"models.{model}.backbone.dataset: unknown dataset {backbone.get('dataset')!r}")
        if backbone["source"] == "file" and not backbone.get("path"):
            raise ConfigError(f"models.{model}.backbone.path: required when source is 'file'")
    for dataset in selected["datasets"]:
        if dataset not in config["datasets"]:
            raise ConfigError(
                f"{key}.datasets: unknown dataset {dataset!r}; the datasets section defines {sorted(config['datasets'])}"
            )
    for name, spec in config["datasets"].items():
        try:
            check_kind(spec["kind"])
        except ValueError as err:
            raise ConfigError(f"datasets.{name}.kind: {err}") from err
        try:
            check_options(spec["kind"], spec.get("options", {}))
        except ValueError as err:
            raise ConfigError(f"datasets.{name}.{err}") from err
        try:
            augment_config(spec)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"datasets.{name}: {err}") from err
    for dataset in selected["datasets"]:
        _check_files(config, dataset)
    for dataset in config.get("by_dataset", {}):
        if dataset not in config["datasets"]:
            raise ConfigError(
                f"by_dataset: unknown dataset {dataset!r}; the datasets section defines {sorted(config['datasets'])}"
            )
    specs = {model: model_spec(config, model) for model in selected["models"]}
    variants = {f"{key}.methods": config.get("methods", {})}  # the hyperparameters, and per dataset
    for dataset in selected["datasets"]:
        if "methods" in config.get("by_dataset", {}).get(dataset, {}):
            variants[f"by_dataset.{dataset}.methods"] = merged(
                config.get("methods", {}), config["by_dataset"][dataset]["methods"]
            )
    for method in study_methods(config):
        for where, hyperparameters in variants.items():
            try:
                method_cfg = method_config(method, hyperparameters)
                for model, spec in specs.items():
                    method_cfg.check_widths(spec.block_widths(), model=model, layout=spec.layout)
            except (ValueError, TypeError) as err:
                raise ConfigError(f"{where}: {method!r}: {err}") from err
    for method in study_methods(config):
        check_device(config, method)
    check_compute(config)
    check_grids(config)
    every = config.get("checkpoint_every", 0)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(
            f"checkpoint_every: must be an integer >= 0 (optimizer steps between resume states, 0 for none), got {every!r}"
        )
    try:
        ConvergenceCriterion(**config.get("convergence", {}))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    except TypeError as err:  # an unknown key
        raise ConfigError(f"convergence: {err}") from err
    for section in ("models", "datasets"):
        for name in config["resources"][section]:
            if name not in config[section]:
                raise ConfigError(
                    f"resources.{section}: unknown {section[:-1]} {name!r}; the {section} section defines {sorted(config[section])}"
                )
    try:
        export = ExportConfig(**config.get("export", {}))
        for model in selected["models"]:
            export.check_widths(model_spec(config, model).block_widths(), model)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from err
    try:
        TrainConfig(**config["train"])
        for dataset in selected["datasets"]:
            resolve_run(config, selected["models"][0], dataset, selected["methods"][0], 0)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"train (or by_dataset.<dataset>.train): {err}") from err


def _typed(value: Any) -> Any:
    """A command-line scalar as YAML reads it: Snakemake's ``--config`` reads the values inside a
    ``{...}`` as strings ('true', '5'), which config.yaml would read as a bool and an int."""
    import yaml

    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    if isinstance(value, str):
        typed = yaml.safe_load(value) if value.strip() else value
        return typed if isinstance(typed, bool | int | float) or typed is None else value
    return value


def retype_command_line(config: dict[str, Any], command_line: dict[str, Any]) -> None:
    """Give each string that ``command_line`` (Snakemake's ``--config`` values; a ``--configfile``
    is YAML already, and its quoted strings stay strings) put into ``config`` the type YAML gives
    it, in place."""

    def visit(target: dict[str, Any], given: dict[str, Any]) -> None:
        for key, value in given.items():
            if key not in target:
                continue
            if isinstance(value, dict) and isinstance(target[key], dict):
                visit(target[key], value)
            elif target[key] == value:
                target[key] = _typed(value)

    visit(config, command_line)


def _schema_error(config: dict[str, Any], command_line: dict[str, Any]) -> str:
    """Where the first schema error is, and whether the command line or config.yaml set it."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    error = next(iter(jsonschema.Draft202012Validator(schema).iter_errors(config)), None)
    if error is None:
        return ""
    path = [str(part) for part in error.absolute_path]
    given: Any = command_line
    for part in error.absolute_path:
        in_dict = isinstance(given, dict) and part in given
        in_list = isinstance(given, list) and isinstance(part, int) and part < len(given)
        if not (in_dict or in_list):
            break
        given = given[part]
    else:
        path = path or ["(top level)"]
        return f"the command line (--config) sets {'.'.join(path)}: {error.message}"
    return f"config.yaml at {'.'.join(path) or '(top level)'}: {error.message}"


def load(config: dict[str, Any], command_line: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply the selected study's overrides, then validate ``config`` in place against the schema
    (filling defaults), then semantically.

    Args:
        command_line: what Snakemake's ``--config`` merged into ``config``: its
            strings are read as YAML reads them (:func:`retype_command_line`), and a schema error
            in a key it set names the command line rather than config.yaml.
    """
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as validate_schema

    command_line = command_line or {}
    retype_command_line(config, command_line)
    apply_study_overrides(config)
    try:
        validate_schema(config, str(SCHEMA))
    except WorkflowError as err:
        where = _schema_error(config, command_line)
        raise ConfigError(f"{where or 'config.yaml'} (checked against {SCHEMA.name}): {err}") from err
    validate(config)
    return config
