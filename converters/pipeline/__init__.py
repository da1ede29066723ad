"""Deep Compression with training data (Han, Mao & Dally, ICLR 2016) for PyTorch models.

The three stages, with the retraining that makes them work:

1. **Pruning with retraining** -- :func:`iterative_prune`: per-layer magnitude pruning to a
   schedule of sparsity steps (optionally conv and fully connected layers in separate
   phases), retraining after each step with the masks enforced (gradients of pruned weights
   masked, pruned weights reset to exactly zero after every optimizer step), with optional
   L1 / L2 regularisation. :func:`neuron_masks` prunes whole output neurons / filters
   (structured pruning, shapes kept).
2. **Trained quantization** -- :func:`quantize_layers` shares each layer's weights with
   k-means (:func:`converters.quantize.quantize`); :func:`finetune_centroids` then trains the
   codebooks: the gradients of all weights sharing a centroid are summed into it, pruned
   zeros stay zero, and every weight is reset to ``codebook[index]`` after each step.
3. **Huffman-coded storage** -- :func:`write_dcz` exports the model to ONNX, replaces its
   weights by references and stores each quantized layer with exactly its fine-tuned
   codebook and indices.

:func:`deep_compress` runs them all; with ``max_accuracy_drop`` a per-layer sensitivity scan
(:func:`sensitivity_scan`) picks each layer's sparsity and bits (:func:`choose_plan`) so the
estimated file is smallest within the accuracy budget, and the result is verified (and
backed off if over budget). :func:`pruning_curves` compares weight and neuron pruning.

One file per job (this module only re-exports their public names):

=============  ==========================================================================
config.py      :class:`Settings` and the defaults
loaders.py     how data reaches the training loop (arrays, Datasets, DataLoaders)
metrics.py     evaluate(model) -> float, accuracy, predictions, mean loss
dist.py        more than one process: DDP, sums across ranks, rank 0 writes
resume.py      the run's state after each stage, to resume an interrupted run
masks.py       the compressible weights, magnitude / neuron masks
train.py       the training loop with masks held, L1 / L2 / proximal L1
pruning.py     stage 1: the pruning schedule with retraining; pruning curves
share.py       stage 2: k-means weight sharing and centroid fine-tuning
plan.py        the sensitivity scan and the per-layer planner
export.py      stage 3: ONNX export, the .dcz, running it in ONNX Runtime
report.py      progress messages, report.json, plots
models.py      reference models (MLPs, LeNet-300-100, LeNet-5)
run.py         :func:`deep_compress`: the stages in order, and its :class:`Result`
=============  ==========================================================================

Needs PyTorch (``pip install 'dcz[torch]'``, torch==2.13.0); the plots need matplotlib.
"""

from .config import (CURVE_FRACTIONS, DEFAULT_BITS, DEFAULT_SCHEDULE, DEFAULT_SPARSITY, SCAN_BITS, SCAN_SPARSITIES,
                     Settings)
from .export import OPSET, encode_model, export_onnx, ort_accuracy, ort_predict, tensor_rows, write_dcz
from . import dist
from .loaders import GlobalBatches, batches, first_batch, is_arrays, is_dataset
from .masks import Layer, Masks, apply_masks, layers, magnitude_masks, neuron_masks, sparsity
from .metrics import Evaluate, accuracy_fn, mean_loss, negative_loss_fn, predict
from .models import MLP, LeNet5, digits_mlp, lenet5, lenet300, mnist_mlp
from .plan import Scan, choose_plan, estimate_bytes, sensitivity_scan
from .pruning import iterative_prune, pruning_curves
from .report import console_progress, echo_stages, plot_pruning_curves, plot_scan, save_report
from .run import Result, deep_compress
from .share import Quantized, finetune_centroids, quantize_layers
from .train import Progress, train

__all__ = [
    "CURVE_FRACTIONS", "DEFAULT_BITS", "DEFAULT_SCHEDULE", "DEFAULT_SPARSITY", "SCAN_BITS", "SCAN_SPARSITIES", "Settings",
    "OPSET", "encode_model", "export_onnx", "ort_accuracy", "ort_predict", "tensor_rows", "write_dcz",
    "dist", "GlobalBatches", "batches", "first_batch", "is_arrays", "is_dataset",
    "Layer", "Masks", "apply_masks", "layers", "magnitude_masks", "neuron_masks", "sparsity",
    "Evaluate", "accuracy_fn", "mean_loss", "negative_loss_fn", "predict",
    "MLP", "LeNet5", "digits_mlp", "lenet5", "lenet300", "mnist_mlp",
    "Scan", "choose_plan", "estimate_bytes", "sensitivity_scan",
    "iterative_prune", "pruning_curves",
    "console_progress", "echo_stages", "plot_pruning_curves", "plot_scan", "save_report",
    "Result", "deep_compress",
    "Quantized", "finetune_centroids", "quantize_layers",
    "Progress", "train",
]
