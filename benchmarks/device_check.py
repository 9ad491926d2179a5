"""One-command check of every PEFT method through our trainer, for machines with a GPU.

For each method it builds the model, lets the method prepare it on the device (bitsandbytes
quantizes the base there; ``prepare_model`` checks the peft layer classes and the trainable count)
and trains it with ``vitpeft.train.fit``, the trainer every run uses (bf16 autocast and fused
AdamW on CUDA, ``--compile`` for torch.compile, ``--precision`` to measure another than the
device's ``auto``), for a fixed number of steps on random uint8 images held on the device. A
one-step warm-up run goes first (it compiles, and allocates).

Each method trains as a study's runs train it (``--recipe STUDY``, default ``full``, on the study's
first dataset or ``--dataset``): config.yaml's hyperparameters and weight average for the method,
the dataset's augmentation (the full study's: SSF's, with RandAugment, mixup or cutmix and
erasing), label smoothing and clipping, the batch size, on images of the side the dataset stores
(CIFAR's 32 px, upsampled on the device). The rates file says which study and batch size, and the
runtime estimate of that study alone uses it. ``--recipe plain`` measures the model's steps alone.

Printed per method: images/s of the training steps (the trainer's "train" phase, timed apart from
its validation), peak memory of the training steps (``vitpeft.memory``: CUDA max allocated; on CPU the
resident set), and model FLOP utilization: the FLOPs of one step, counted eagerly by torch's
FlopCounterMode (it does not see bitsandbytes' own kernels, so the quantized methods' utilization
is understated). With ``--compile``, the graphs torch.compile made of the model and its graph
breaks, each reason once with its count. For one method (``--bare``, lora_r8) also the trainer's
images/s over those of a plain loop doing the same step's work in the same run: what the
trainer's bookkeeping costs there.

    python benchmarks/device_check.py                      # deit_small at 224 px, 20 steps per method
    python benchmarks/device_check.py --compile            # the same through torch.compile
    python benchmarks/device_check.py --precision fp16     # the same in fp16 with a GradScaler
    python benchmarks/device_check.py --recipe plain       # no augmentation, mixing or weight average
    python benchmarks/device_check.py --recipe vtab --img-size 224   # as the vtab study trains
    python benchmarks/device_check.py --json rates.json    # also write the measured rates (compute.throughput_file)
    python benchmarks/device_check.py --model deit_tiny --img-size 16 --patch-size 4 --batch-size 8 --steps 2
                                                           # a quick CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from timm.utils import ModelEmaV3
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode

from vitpeft import config as study_config
from vitpeft import device as devices
from vitpeft.config import AugmentConfig, ModelSpec, TrainConfig
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.io import write_json
from vitpeft.memory import PhasePeaks
from vitpeft.methods import method_config, prepare_model
from vitpeft.methods.base import MethodConfig, MethodContext, Prepared
from vitpeft.models import count_parameters, create_model
from vitpeft.train import Split, fit, param_groups

REPO = Path(__file__).resolve().parent.parent
METHODS = ["full", "linear", "lora_r8", "qlora8_r8", "qlora4_r8", "adalora_r8", "qalora4_r8"]
CLASSES = 100


def random_split(num_images: int, side: int, device: torch.device) -> Split:
    generator = torch.Generator().manual_seed(num_images)
    images = torch.randint(0, 256, (num_images, side, side, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, CLASSES, (num_images,), generator=generator)
    return Split(images.to(device), labels.to(device))


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward and backward pass (the optimizer's elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TimedPhases(PhasePeaks):
    """:class:`PhasePeaks` that also sums the seconds of each phase (the device synchronized)."""

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        with super().phase(name):
            synchronize(self.device)
            started = time.perf_counter()
            try:
                yield
            finally:
                synchronize(self.device)
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def bare_loop_rate(
    prepared: Prepared,
    train: Split,
    preprocess,
    schedule: TrainConfig,
    lr: float,
    weight_decay: float,
    ema_decay: float,
    device,
) -> float:
    """Images/s of a plain loop doing a training step's work as ``fit`` does it (augmentation and
    mixing, label smoothing, precision and loss scaling, the method's extra loss and after-step
    hook, AdamW over the same parameter groups, clipping, compilation, the weight average on the
    steps taken), with no schedule and no records: what the trainer's bookkeeping is measured
    against. Like the trainer's timed run it starts with a fresh optimizer and scaler, the model
    compiled by the warm-up run."""
    model = prepared.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, fused=devices.fused_adamw(device))
    scaler = devices.grad_scaler(device, schedule.precision)
    ema = ModelEmaV3(model, decay=ema_decay) if ema_decay > 0 else None
    generator = torch.Generator().manual_seed(0)
    model.train()
    forward = torch.compile(model) if schedule.compile else model
    batch_size = schedule.batch_size

    def step(number: int, start: int) -> None:
        x = preprocess(train.images[start : start + batch_size], train=True, generator=generator)
        x, target = preprocess.mix(x, train.labels[start : start + batch_size])
        with devices.autocast(device, schedule.precision):
            loss = F.cross_entropy(forward(x).float(), target, label_smoothing=schedule.label_smoothing)
            if prepared.extra_loss is not None:
                loss = loss + prepared.extra_loss()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if schedule.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, schedule.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
        skipped = scaler.is_enabled() and not bool(grad_norm.isfinite())
        scaler.step(optimizer)
        scaler.update()
        if prepared.after_step is not None:
            prepared.after_step(number, skipped)
        if ema is not None and not skipped:
            ema.update(model)
        optimizer.zero_grad(set_to_none=True)

    synchronize(device)
    started = time.perf_counter()
    for number, start in enumerate(range(0, len(train), batch_size), start=1):
        step(number, start)
    synchronize(device)
    return len(train) / (time.perf_counter() - started)


NATIVE_SIDES = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64}  # the images these kinds store


@dataclass(frozen=True)
class Recipe:
    """How a study's runs on one dataset train, besides the model: their method hyperparameters and
    weight average, augmentation, regularization and batch size, on images of the side the
    dataset stores (upsampled on the device as the runs upsample them). ``plain``: none of it."""

    name: str
    dataset: str | None
    batch_size: int
    source_size: int
    config: dict | None = None

    @classmethod
    def of(cls, args) -> Recipe:
        if args.recipe == "plain":
            return cls("plain", None, args.batch_size or 64, args.img_size)
        raw = yaml.safe_load((REPO / "config.yaml").read_text())
        config = study_config.load(raw | {"study": args.recipe})
        study = study_config.study(config)
        dataset = args.dataset or study["datasets"][0]
        spec = study_config.prepared_dataset_spec(config, dataset)
        side = spec.get("options", {}).get("image_size") or NATIVE_SIDES.get(spec["kind"], args.img_size)
        run = study_config.resolve_run(config, study["models"][0], dataset, study["methods"][0], 0)
        return cls(args.recipe, dataset, args.batch_size or run.train.batch_size, side, config)

    def run(self, method: str) -> tuple[MethodConfig, AugmentConfig, dict[str, float]]:
        """``method``'s config, the augmentation and the training's regularization."""
        if self.config is None:
            return method_config(method), AugmentConfig(), {}
        model = study_config.study(self.config)["models"][0]
        run = study_config.resolve_run(self.config, model, self.dataset, method, 0)
        regularization = {"grad_clip": run.train.grad_clip, "label_smoothing": run.train.label_smoothing}
        return run.method, run.augment, regularization


def check(method: str, args, recipe: Recipe, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    counters.clear()
    model = create_model(ModelSpec(args.model, img_size=args.img_size, patch_size=args.patch_size), CLASSES)
    model.to(device)
    config, augment, regularization = recipe.run(method)
    batch_size = recipe.batch_size
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    preprocess = BatchPreprocessor(args.img_size, mean, std, augment, num_classes=CLASSES)
    train = random_split(batch_size * args.steps, recipe.source_size, device)
    one_batch = Split(train.images[:batch_size], train.labels[:batch_size])
    probe = preprocess(one_batch.images[:8], train=False)
    prepared = prepare_model(model, config, MethodContext(args.steps + 1, device, probe_batch=probe))
    model = prepared.model.to(device)
    flops = step_flops(model, preprocess(one_batch.images, train=False), one_batch.labels)

    schedule = TrainConfig(
        epochs=1,
        batch_size=batch_size,
        eval_batch_size=batch_size,
        compile=args.compile,
        precision=args.precision,
        **regularization,
    )

    def train_on(split: Split, desc: str, memory: TimedPhases | None = None) -> None:
        fit(
            prepared,
            split,
            one_batch,
            preprocess,
            schedule,
            config.lr,
            config.weight_decay,
            0,
            desc,
            memory=memory,
            ema_decay=config.ema_decay,
        )

    train_on(one_batch, f"{method} warm-up")
    memory = TimedPhases(device)
    train_on(train, method, memory)
    train_s = memory.seconds["train"]
    result = {
        "model": args.model,
        "method": method,
        "precision": devices.training_precision(device, args.precision),
        "compile": args.compile,
        "images_per_s": len(train) / train_s,
        "mfu": flops * args.steps / train_s / (args.peak_tflops * 1e12),
        "train_peak_mem_mb": memory.peaks["train"],
        "trainable": count_parameters(model)["trainable"],
        # what the steps did besides the model, read off what trained
        "randaugment": preprocess.randaugment is not None,
        "mixing": preprocess.mixer is not None,
        "erasing_prob": preprocess.augment.erasing_prob,
        "label_smoothing": schedule.label_smoothing,
        "ema_decay": config.ema_decay,
    }
    layer = next(type(m) for name, m in model.named_modules() if name.endswith("attn.qkv"))
    print(
        f"{method:11s} {result['images_per_s']:9.1f} img/s  MFU {100 * result['mfu']:5.1f}%  "
        f"train peak {result['train_peak_mem_mb']:8.0f} MiB  trainable {result['trainable']:>10,}  "
        f"qkv {layer.__module__}.{layer.__name__}",
        flush=True,
    )
    if args.compile:  # what torch.compile made of this method's training: graphs and their breaks
        breaks = counters["graph_break"]
        result["graphs"] = counters["stats"]["unique_graphs"]
        result["graph_breaks"] = sum(breaks.values())
        print(
            f"{method:11s} compiled into {result['graphs']} graphs, {result['graph_breaks']} graph breaks",
            flush=True,
        )
        for reason, count in breaks.most_common():
            print(f"{method:11s}   {count} x {reason.splitlines()[0]}", flush=True)
    if method == args.bare:
        bare = bare_loop_rate(
            prepared, train, preprocess, schedule, config.lr, config.weight_decay, config.ema_decay, device
        )
        result["bare_loop_images_per_s"] = bare
        print(
            f"{method:11s} trainer / bare loop {result['images_per_s'] / bare:.3f} "
            f"({result['images_per_s']:.1f} / {bare:.1f} img/s, measured in this run)",
            flush=True,
        )
    return result


def rate_key(rate: dict) -> tuple:
    return rate["model"], rate["method"], rate["compile"], rate["precision"]


def earlier_rates(path: str, header: dict) -> list[dict]:
    """The rates an existing ``--json`` file holds, which this run adds to (replacing those it
    measures again, e.g. another precision beside the device's auto), if it measured the same way."""
    if not Path(path).exists():
        return []
    earlier = json.loads(Path(path).read_text())
    for key, value in header.items():
        if earlier.get(key) != value:
            raise SystemExit(
                f"device_check: {path} holds rates measured with {key} {earlier.get(key)!r}, this run's is "
                f"{value!r}; write them to another file"
            )
    return earlier["rates"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, help="default: the recipe's (plain: 64)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="train through torch.compile")
    parser.add_argument(
        "--recipe",
        default="full",
        help="a study of config.yaml, whose runs' hyperparameters, weight average, augmentation, "
        "regularization and batch size each method trains with; plain: none of them",
    )
    parser.add_argument(
        "--dataset", help="the study's dataset whose recipe and image side (default: its first)"
    )
    parser.add_argument(
        "--precision", choices=devices.PRECISIONS, default="auto", help="train.precision to measure"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="device bf16 dense peak (H100 SXM: 989)"
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--json", metavar="PATH", help="write the measured rates here (added to a file measured the same way)"
    )
    parser.add_argument("--bare", default="lora_r8", help="the method also timed in a plain loop")
    args = parser.parse_args()
    recipe = Recipe.of(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"device {name}, torch {torch.__version__}, {args.model} at {args.img_size} px, "
        f"batch {recipe.batch_size}, {args.steps} timed steps, the {recipe.name} recipe"
        f"{f' of {recipe.dataset}' if recipe.dataset else ''} on {recipe.source_size} px sources, "
        f"precision {devices.training_precision(device, args.precision)}",
        flush=True,
    )
    header = {
        "device": name,
        "torch": torch.__version__,
        "img_size": args.img_size,
        "batch_size": recipe.batch_size,
        "recipe": recipe.name,
        "dataset": recipe.dataset,
        "source_size": recipe.source_size,
        # what train.precision: auto trains in there, so a study can pick its rates
        "auto_precision": devices.training_precision(device),
    }
    kept = earlier_rates(args.json, header) if args.json else []
    rates, failed = [], []
    for method in args.methods.split(","):
        # A first run on a new device must measure every method it can: one method's failure is
        # printed and counted, and the rates so far are rewritten after each method, so that a
        # timeout or a crash keeps what was measured.
        try:
            rates.append(check(method, args, recipe, device))
        except Exception:
            failed.append(method)
            print(f"{method:11s} FAILED", flush=True)
            traceback.print_exc()
        devices.empty_cache(device)
        if args.json:
            measured = {rate_key(rate) for rate in rates}
            earlier = [rate for rate in kept if rate_key(rate) not in measured]
            write_json(args.json, header | {"rates": earlier + rates})
    if failed:
        raise SystemExit(
            f"device_check: {len(failed)} of {len(failed) + len(rates)} failed: {', '.join(failed)}"
        )


if __name__ == "__main__":
    main()
