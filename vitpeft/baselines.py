"""Classical reference classifiers on raw pixels, fit on the same splits as the ViT runs.

What a ViT method reaches means more next to what a simple classifier gets from the same data:
scikit-learn's logistic regression, an RBF-kernel SVM and k-nearest neighbours, each on the images'
pixels scaled to [0, 1] and flattened. Each is fit on the train split (a stratified subsample of
at most ``max_train_images`` of it: an RBF SVM's fit grows quadratically with the images), its
hyperparameters chosen by validation top-1 among the configured candidates, and scored once on
the test split. The prepared data are checked against their manifest first, as training does.

scikit-learn is imported only inside the functions that fit: the workflow imports this module to
name the baselines when it parses the Snakefile.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vitpeft.data import arrays
from vitpeft.io import provenance, sha256_file, write_json

# The baselines, by the name used in paths and config keys, with the name the paper prints.
BASELINE_LABELS = {
    "logreg": "Logistic regression",
    "svc": "RBF SVM",
    "knn": "$k$-nearest neighbours",
}
BASELINE_NAMES = tuple(BASELINE_LABELS)
FEATURES = "raw pixels scaled to [0, 1], flattened"


def estimator(name: str, params: dict[str, Any]):
    """An unfitted scikit-learn classifier for baseline ``name`` with ``params``."""
    if name == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(**params)
    if name == "svc":
        from sklearn.svm import SVC

        return SVC(kernel="rbf", **params)
    if name == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(**params)
    raise ValueError(f"unknown baseline {name!r}; known: {list(BASELINE_NAMES)}")


def candidates(hyperparameters: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the listed values (a scalar is one fixed value), in config order."""
    keys = list(hyperparameters)
    values = [v if isinstance(v, list) else [v] for v in hyperparameters.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(N, H, W, C)`` as float32 rows of pixels in [0, 1]: ``(N, H * W * C)``."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def capped(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``cap`` images, every class in its share (all, if there are fewer)."""
    if len(labels) <= cap:
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(labels)), train_size=cap, stratify=labels, random_state=seed)
    return np.sort(keep)


def top1(model, features: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float(np.mean(model.predict(features) == labels))


def fit_baseline(
    name: str,
    data_dir: str | Path,
    spec: dict[str, Any],
    out_json: str | Path,
    threads: int = 1,
) -> dict[str, Any]:
    """Fit baseline ``name`` on a prepared dataset; write its record to ``out_json``.

    Args:
        name: one of :data:`BASELINE_NAMES`.
        data_dir: the prepared dataset (``train.npz``, ``val.npz``, ``test.npz``, ``manifest.json``).
        spec: the config's ``baselines`` section (``max_train_images``, ``subsample_seed`` and the
            candidate hyperparameters under ``name``).
        out_json: where the record goes.
        threads: BLAS and OpenMP threads of the fits.

    Returns:
        The record: test and validation top-1 (percent) of the candidate with the best validation
        top-1 (the first on a tie), its fit time, its hyperparameters, every candidate's validation
        top-1, the training images used, the data manifest's SHA-256 and provenance.
    """
    from sklearn import __version__ as sklearn_version
    from threadpoolctl import threadpool_limits

    data_dir = Path(data_dir)
    arrays.verify(data_dir)
    splits = {split: arrays.load_split(data_dir, split) for split in arrays.SPLITS}
    train_images, train_labels = splits["train"]
    kept = capped(train_labels, spec["max_train_images"], spec["subsample_seed"])
    x_train, y_train = pixels(train_images[kept]), train_labels[kept]
    x_val, y_val = pixels(splits["val"][0]), splits["val"][1]
    tried, best, best_model = [], None, None
    with threadpool_limits(limits=threads):
        for params in candidates(spec[name]):
            model = estimator(name, params)
            started = time.perf_counter()
            model.fit(x_train, y_train)
            fit_time = time.perf_counter() - started
            tried.append({"params": params, "val_top1": top1(model, x_val, y_val), "fit_time_s": fit_time})
            print(f"{name} {params}: val top-1 {tried[-1]['val_top1']:.2f}%", file=sys.stderr, flush=True)
            if best is None or tried[-1]["val_top1"] > best["val_top1"]:  # strictly: the first on a tie
                best, best_model = tried[-1], model
        test = top1(best_model, pixels(splits["test"][0]), splits["test"][1])
    record = {
        "baseline": name,
        "label": BASELINE_LABELS[name],
        "dataset": data_dir.name,
        "features": FEATURES,
        "feature_dim": int(x_train.shape[1]),
        "test_top1": test,
        "val_top1": best["val_top1"],
        "fit_time_s": best["fit_time_s"],
        "hyperparameters": best["params"],
        "candidates": tried,
        "train_images": len(kept),
        "train_images_available": len(train_labels),
        "max_train_images": spec["max_train_images"],
        "subsample_seed": spec["subsample_seed"],
        "subsampled": len(kept) < len(train_labels),
        "data_manifest_sha256": sha256_file(data_dir / "manifest.json"),
        "provenance": provenance(threads=threads, sklearn=sklearn_version),
    }
    write_json(out_json, record)
    print(f"{name} on {data_dir.name}: test top-1 {test:.2f}% ({best['params']})", file=sys.stderr)
    return record
