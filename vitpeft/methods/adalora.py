"""AdaLoRA (Zhang et al., 2023, arXiv 2303.10512) through peft: SVD-shaped adapters whose rank
budget is reallocated by importance during training.

peft adds AdaLoRA's orthogonal regularizer only when the model output has a ``.loss``; a timm
model (or our transformers wrapper) returns a tensor, so we add it to the loss ourselves. Ranks move from ``init_r`` per layer
down to an average of ``r`` (the name's rank) on the schedule ``tinit`` / ``tfinal`` / ``delta_t``,
which needs the real number of optimizer steps: it comes from the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vitpeft.methods.base import MethodContext, Prepared, head_parameter_count
from vitpeft.methods.lora import LoraConfig, target_layers, wrap

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class AdaLoraConfig(LoraConfig):
    """AdaLoRA: target average rank ``r`` from the name, starting from ``init_r`` per layer.

    Attributes:
        init_r: initial rank of every adapted layer; ``None`` means ``ceil(1.5 * r)``.
        tinit_fraction: share of the steps trained at full rank before pruning starts.
        tfinal_fraction: share of the steps trained at the final ranks.
        delta_t: steps between two reallocations.
        beta1, beta2: smoothing of the importance and of its uncertainty.
        orth_reg_weight: weight of the orthogonal regularizer on P and Q.
    """

    init_r: int | None = field(default=None, metadata={"help": "initial rank per layer"})
    tinit_fraction: float = field(default=0.1, metadata={"help": "warmup share at full rank"})
    tfinal_fraction: float = field(default=0.2, metadata={"help": "final share at fixed ranks"})
    delta_t: int = field(default=1, metadata={"help": "steps between reallocations"})
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = field(default=0.1, metadata={"help": "orthogonal regularizer weight"})

    def __post_init__(self):
        super().__post_init__()
        if self.init_r is None:
            object.__setattr__(self, "init_r", -(-3 * self.r // 2))
        if self.r > self.init_r:
            raise ValueError(
                f"{self.name}: AdaLoRA's target rank {self.r} is above its initial rank init_r={self.init_r}"
            )
        if not (
            self.tinit_fraction >= 0
            and self.tfinal_fraction >= 0
            and self.tinit_fraction + self.tfinal_fraction < 1
        ):
            raise ValueError(
                f"{self.name}: need tinit_fraction + tfinal_fraction < 1, got {self.tinit_fraction} + {self.tfinal_fraction}"
            )
        if self.delta_t < 1 or self.orth_reg_weight < 0:
            raise ValueError(f"{self.name}: delta_t must be >= 1 and orth_reg_weight >= 0")
        if self.ema_decay > 0:
            raise ValueError(
                f"{self.name}: ema_decay must be 0, got {self.ema_decay!r}: AdaLoRA prunes its singular "
                "values in place as it trains, and an average of its weights would bring the pruned ones back"
            )


def schedule(config: AdaLoraConfig, total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal) in steps; peft requires ``tinit < total_step - tfinal``."""
    tinit, tfinal = round(config.tinit_fraction * total_steps), round(config.tfinal_fraction * total_steps)
    if not tinit < total_steps - tfinal:
        raise ValueError(f"{config.name}: {total_steps} steps are too few for tinit={tinit}, tfinal={tfinal}")
    return tinit, tfinal


def expected_trainable_params(model: nn.Module, config: AdaLoraConfig) -> int:
    """init_r * (in + out) + init_r singular values per adapted layer, plus the head."""
    layers = target_layers(model, config).values()
    return sum(config.init_r * (m.in_features + m.out_features + 1) for m in layers) + head_parameter_count(
        model
    )


def orthogonal_regularizer(model: nn.Module) -> torch.Tensor:
    """Mean over adapters of ||P^T P - I||_F and ||Q Q^T - I||_F (AdaLoRA's R(P, Q))."""
    import torch

    terms = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith("lora_A.default"):  # Q: (r, in), rows should be orthonormal
            gram = param @ param.T
        elif name.endswith("lora_B.default"):  # P: (out, r), columns should be orthonormal
            gram = param.T @ param
        else:
            continue
        terms.append(torch.linalg.matrix_norm(gram - torch.eye(len(gram), device=gram.device)))
    return torch.stack(terms).mean()


def layer_ranks(model: nn.Module) -> dict[str, int]:
    """The rank each adapted layer holds now: its singular values that pruning left non-zero."""
    return {
        name.removeprefix("base_model.model.").removesuffix(".lora_E.default"): int((param != 0).sum())
        for name, param in model.named_parameters()
        if name.endswith("lora_E.default")
    }


def prepare(model: nn.Module, config: AdaLoraConfig, context: MethodContext) -> Prepared:
    import peft

    tinit, tfinal = schedule(config, context.total_steps)
    expected = expected_trainable_params(model, config)
    peft_config = peft.AdaLoraConfig(
        init_r=config.init_r,
        target_r=config.r,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=config.delta_t,
        beta1=config.beta1,
        beta2=config.beta2,
        orth_reg_weight=config.orth_reg_weight,
        total_step=context.total_steps,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=sorted(target_layers(model, config)),
        modules_to_save=["head"],
    )
    wrapped = wrap(model, config, peft_config, layer_type=peft.tuners.adalora.AdaLoraLayer)
    # peft moves each adapter to its base layer's device (or dtype) by re-wrapping what it moved
    # as a new Parameter, trainable by default: on a GPU the rank counts, which divide each
    # adapter's output, would then be trained.
    for name, param in wrapped.named_parameters():
        if ".ranknum." in name:
            param.requires_grad_(False)

    def record() -> dict[str, Any]:
        return {"adalora_ranks": layer_ranks(wrapped)}

    # peft's RankAllocator keeps smoothed importance scores between steps, and the masks it chose
    # sit in the adapter config; a resumed run that lost them would prune different ranks.
    allocator = wrapped.base_model.rankallocator
    adapter_config = wrapped.base_model.peft_config[wrapped.base_model.trainable_adapter_name]

    def state() -> dict[str, Any]:
        return {
            "ipt": dict(allocator.ipt),
            "exp_avg_ipt": dict(allocator.exp_avg_ipt),
            "exp_avg_unc": dict(allocator.exp_avg_unc),
            "rank_pattern": adapter_config.rank_pattern,
        }

    def load_state(saved: dict[str, Any]) -> None:
        device = context.device
        allocator.ipt = {n: t.to(device) for n, t in saved["ipt"].items()}
        allocator.exp_avg_ipt = {n: t.to(device) for n, t in saved["exp_avg_ipt"].items()}
        allocator.exp_avg_unc = {n: t.to(device) for n, t in saved["exp_avg_unc"].items()}
        adapter_config.rank_pattern = saved["rank_pattern"]

    def after_step(step: int, skipped: bool) -> None:
        if not skipped:
            wrapped.base_model.update_and_allocate(step)
            return
        if not allocator.exp_avg_ipt:  # no step was taken yet: no scores to mask by
            return
        # A skipped fp16 step's gradients are inf or NaN: one such importance update would leave
        # the smoothed scores NaN for good, and no rank would ever be pruned. The budget schedule
        # and the masks still follow the step count, on the scores as they stand.
        allocator.update_ipt = lambda model: None
        try:
            wrapped.base_model.update_and_allocate(step)
        finally:
            del allocator.update_ipt  # peft's own method again

    budget = config.r * len(layer_ranks(wrapped))
    return Prepared(
        wrapped,
        expected_trainable=expected,
        report={
            "adalora_init_r": config.init_r,
            "adalora_target_r": config.r,
            "adalora_rank_budget": budget,
            "adalora_tinit": tinit,
            "adalora_tfinal": tfinal,
        },
        extra_loss=lambda: config.orth_reg_weight * orthogonal_regularizer(wrapped),
        after_step=after_step,
        epoch_record=record,
        state=state,
        load_state=load_state,
    )
