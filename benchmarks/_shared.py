"""Pieces the benchmark scripts share: the tanh MLP net builder and the environment lines.

The network is the public :class:`sklearn_influence.datasets.TanhMLP` (64 → hidden → 10).
"""

import os
import platform

import sklearn
import skorch
import torch

import sklearn_influence
from sklearn_influence.datasets import TanhMLP


def sgd_tanh_net(hidden=32, epochs=30, lr=0.1):
    """The skorch classifier of the PBRF benchmarks: TanhMLP, SGD with momentum, weight decay."""
    from skorch import NeuralNetClassifier

    return NeuralNetClassifier(
        TanhMLP,
        module__hidden=hidden,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.SGD,
        lr=lr,
        optimizer__momentum=0.9,
        optimizer__weight_decay=1e-3,
        max_epochs=epochs,
        batch_size=64,
        train_split=None,
        verbose=0,
    )


def environment(threads):
    """Markdown bullet lines: machine, load average now, threads and library versions."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"* machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{platform.system()} {platform.release()}; load average at start {load:.2f}",
        f"* threads: {threads or 'default'} (torch {torch.get_num_threads()})",
        f"* versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"scikit-learn {sklearn.__version__}, skorch {skorch.__version__}, "
        f"sklearn_influence {sklearn_influence.__version__}",
    ]


def report(text, output):
    """Print the results and write them to ``output`` (a markdown file)."""
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
