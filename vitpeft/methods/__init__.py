"""The method registry: a method name from the study grammar -> its config dataclass and set-up.

Grammar: ``full``, ``linear``, ``scratch``, ``lora_r{r}``, ``qlora{bits}_r{r}``, ``adalora_r{r}``,
``qalora{bits}_r{r}``.
A new method is one module (a config dataclass and a ``prepare(model, config, context)``
function returning :class:`~vitpeft.methods.base.Prepared`) plus one entry in :data:`METHODS`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vitpeft.methods import adalora, full, linear, lora, qalora, qlora
from vitpeft.methods.base import MethodConfig, MethodContext, Prepared

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class MethodEntry:
    """One family of methods: the names it answers to, its config and how it changes a model."""

    pattern: str  # full-match regex over method names; named groups become config fields
    form: str  # how the grammar is written for humans, for error messages
    config_cls: type[MethodConfig]
    prepare: Callable[[nn.Module, Any, MethodContext], Prepared]


METHODS: dict[str, MethodEntry] = {
    "full": MethodEntry("full", "full", full.FullConfig, full.prepare),
    "scratch": MethodEntry("scratch", "scratch", full.ScratchConfig, full.prepare),
    "linear": MethodEntry("linear", "linear", linear.LinearConfig, linear.prepare),
    "lora": MethodEntry(r"lora_r(?P<r>\d+)", "lora_r{r}", lora.LoraConfig, lora.prepare),
    "qlora": MethodEntry(
        r"qlora(?P<bits>\d+)_r(?P<r>\d+)", "qlora{bits}_r{r}", qlora.QLoraConfig, qlora.prepare
    ),
    "adalora": MethodEntry(r"adalora_r(?P<r>\d+)", "adalora_r{r}", adalora.AdaLoraConfig, adalora.prepare),
    "qalora": MethodEntry(
        r"qalora(?P<bits>\d+)_r(?P<r>\d+)", "qalora{bits}_r{r}", qalora.QALoraConfig, qalora.prepare
    ),
}


def method_wildcard(families) -> str:
    """A regex (no named groups, for Snakemake wildcards) of every name these families answer to."""
    return re.sub(r"\?P<\w+>", "", "|".join(f"(?:{METHODS[f].pattern})" for f in families))


# Snakemake's wildcard constraint for {method}: any name some family could answer to.
METHOD_WILDCARD = method_wildcard(METHODS)
FP32_BITS = 32.0  # bits per weight of a base that is not quantized
# Families whose trained model is itself INT-N, so its export includes an integer ONNX file.
INT_EXPORT_FAMILIES = ("qalora",)


def parse_method_name(name: str) -> tuple[str, dict[str, int]]:
    """Split a method name into its family and the integer fields encoded in it."""
    for family, entry in METHODS.items():
        match = re.fullmatch(entry.pattern, name)
        if match:
            return family, {k: int(v) for k, v in match.groupdict().items()}
    forms = ", ".join(entry.form for entry in METHODS.values())
    raise ValueError(f"unknown method {name!r}; the known forms are: {forms}")


def method_config(name: str, hyperparameters: dict[str, dict[str, Any]] | None = None) -> MethodConfig:
    """Build and validate the config of method ``name``.

    Args:
        name: a name in the grammar, e.g. ``lora_r8``.
        hyperparameters: the config file's ``methods:`` section, keyed by family.
    """
    family, fields = parse_method_name(name)
    config_cls = METHODS[family].config_cls
    overrides = dict((hyperparameters or {}).get(family, {}))
    allowed = {f.name for f in dataclasses.fields(config_cls)} - {"name"} - set(fields)
    for key in overrides:
        if key not in allowed:
            raise ValueError(f"methods.{family}: unknown key {key!r}; allowed keys: {sorted(allowed)}")
    return config_cls(name=name, **fields, **overrides)


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Inverse of ``dataclasses.asdict`` for a method config."""
    family, _ = parse_method_name(data["name"])
    return METHODS[family].config_cls(**data)


def prepare_model(model: nn.Module, config: MethodConfig, context: MethodContext) -> Prepared:
    """Freeze, unfreeze, quantize or wrap ``model`` as the method prescribes.

    Raises:
        RuntimeError: if the trainable parameters differ from the method's analytic count.
    """
    family, _ = parse_method_name(config.name)
    prepared = METHODS[family].prepare(model, config, context)
    # A method that does not quantize trains over the fp32 base: 32 bits per base weight.
    prepared.report.setdefault("base_bits_per_weight", FP32_BITS)
    trainable = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    if prepared.expected_trainable is not None and trainable != prepared.expected_trainable:
        raise RuntimeError(
            f"{config.name}: {trainable:,} trainable parameters, the formula gives {prepared.expected_trainable:,}"
        )
    return prepared
