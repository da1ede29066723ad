"""Proximal L1 training (soft-thresholding after every SGD step) against magnitude pruning, at equal sparsity.

For each proximal strength lambda and seed, from the same initial weights and with the same epochs:

* **prox**: train ``--epochs`` with SGD (momentum 0.9) and a proximal L1 step after every optimizer step
  (``converters.pipeline.train(..., prox=lambda)``: each weight soft-thresholded by lr x lambda); the exact
  zeros it leaves are its sparsity, per layer. Then ``--retrain-epochs`` of retraining with those zeros held
  (masks, no prox).
* **magnitude**: train ``--epochs`` dense with the same SGD, prune every layer by weight magnitude to the
  *same per-layer sparsity* the prox run reached, retrain ``--retrain-epochs`` with the masks held.

Both arms end with identical per-layer sparsity and identical training budgets; the table gives the test
accuracy of each right after pruning (prox: as trained) and after retraining, averaged over ``--seeds``.
Writes ``--out``.json and ``--out``.md (default results/prox_vs_magnitude).

    .venv/bin/python tools/prox_vs_magnitude.py              # scikit-learn digits, 3 seeds, ~2 min on 1 thread
    .venv/bin/python tools/prox_vs_magnitude.py --data DIR   # any MNIST-format IDX directory (slower)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from converters import data as dcdata  # noqa: E402
from converters import pipeline as P  # noqa: E402


def per_layer_zeros(model) -> dict:
    return {n: float((lay.param == 0).float().mean()) for n, lay in P.layers(model).items()}


def one_seed(ds, sizes, seed: int, lams, epochs: int, retrain: int, lr: float, batch: int) -> list[dict]:
    train = (ds.x_train, ds.y_train)
    ev = P.accuracy_fn(ds.x_test, ds.y_test)
    torch.manual_seed(seed)
    init = P.MLP(sizes)
    dense = copy.deepcopy(init)
    P.train(dense, train, epochs, lr=lr, optimizer="sgd", batch_size=batch, seed=seed)
    dense_acc = ev(dense)
    rows = []
    for lam in lams:
        prox = copy.deepcopy(init)
        P.train(prox, train, epochs, lr=lr, optimizer="sgd", batch_size=batch, seed=seed, prox=lam)
        zeros = per_layer_zeros(prox)
        prox_acc = ev(prox)
        masks = {n: lay.param.detach() != 0 for n, lay in P.layers(prox).items()}
        P.train(prox, train, retrain, lr=lr / 2, optimizer="sgd", batch_size=batch, seed=seed + 1, masks=masks)
        prox_rt = ev(prox)
        mag = copy.deepcopy(dense)
        mmasks = P.magnitude_masks(mag, zeros)
        P.apply_masks(mag, mmasks)
        mag_acc = ev(mag)
        P.train(mag, train, retrain, lr=lr / 2, optimizer="sgd", batch_size=batch, seed=seed + 1, masks=mmasks)
        mag_rt = ev(mag)
        assert abs(P.sparsity(mag) - P.sparsity(prox)) < 1e-3, "the arms must end equally sparse"
        rows.append({"seed": seed, "lambda": lam, "sparsity": P.sparsity(prox), "layers": zeros, "dense": dense_acc,
                     "prox": prox_acc, "prox_retrained": prox_rt, "magnitude": mag_acc, "magnitude_retrained": mag_rt})
        print(f"seed {seed} lambda {lam:g}: sparsity {P.sparsity(prox):.1%}; dense {dense_acc:.2f}%; prox {prox_acc:.2f}% "
              f"-> {prox_rt:.2f}%; magnitude {mag_acc:.2f}% -> {mag_rt:.2f}%", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", help="'digits' or an MNIST-format IDX directory")
    ap.add_argument("--hidden", default="256,128", help="hidden layer sizes of the MLP")
    ap.add_argument("--lambdas", default="0.001,0.003,0.01,0.02")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--retrain-epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "prox_vs_magnitude"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = dcdata.load(a.data)
    x_dim = int(np.prod(ds.sample_shape))
    sizes = (x_dim, *(int(h) for h in a.hidden.split(",")), ds.classes)
    lams = [float(v) for v in a.lambdas.split(",")]
    rows = []
    for seed in range(a.seeds):
        rows += one_seed(ds, sizes, seed, lams, a.epochs, a.retrain_epochs, a.lr, a.batch_size)
    summary = []
    for lam in lams:
        rs = [r for r in rows if r["lambda"] == lam]
        mean = {k: float(np.mean([r[k] for r in rs])) for k in ("sparsity", "dense", "prox", "prox_retrained",
                                                                "magnitude", "magnitude_retrained")}
        summary.append({"lambda": lam, **mean,
                        "layers": {n: float(np.mean([r["layers"][n] for r in rs])) for n in rs[0]["layers"]}})
    seconds = time.perf_counter() - t0
    cmd = "tools/prox_vs_magnitude.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    info = {"command": cmd, "data": ds.name, "train": len(ds.x_train), "test": len(ds.x_test), "model": list(sizes),
            "epochs": a.epochs, "retrain_epochs": a.retrain_epochs, "lr": a.lr, "batch_size": a.batch_size,
            "optimizer": "sgd, momentum 0.9", "seeds": a.seeds, "seconds": round(seconds, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__.split('+')[0]}, 1 thread",
            "summary": summary, "runs": rows}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(info, f, indent=1)
    model = "-".join(map(str, sizes))
    lines = [
        "# Proximal L1 training vs magnitude pruning, at equal sparsity",
        "",
        f"Generated by `.venv/bin/python {cmd}` in {seconds / 60:.1f} minutes ({info['machine']}).",
        "",
        f"MLP {model} on {ds.name} ({len(ds.x_train):,} training, {len(ds.x_test):,} test samples), SGD with momentum "
        f"0.9, lr {a.lr:g}, batch {a.batch_size}, mean over {a.seeds} seeds. **prox**: {a.epochs} epochs with a "
        "proximal L1 step after every SGD step (each weight soft-thresholded by lr x lambda; `dcz pipeline "
        "--prox-l1 LAMBDA`, `Settings(prox_l1=...)`), its exact zeros then held while retraining. **magnitude**: "
        f"{a.epochs} dense epochs, then every layer pruned by magnitude to the per-layer sparsity the prox run "
        f"reached, retrained with the masks held. Both retrain {a.retrain_epochs} epochs at lr {a.lr / 2:g}: same "
        "sparsity per layer, same epochs. Test accuracy:",
        "",
        "| lambda | sparsity (fc1 / fc2 / ... ) | dense | prox, as trained | prox, retrained | magnitude, pruned | "
        "magnitude, retrained |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        per = " / ".join(f"{v:.0%}" for v in s["layers"].values())
        lines.append(f"| {s['lambda']:g} | {s['sparsity']:.1%} ({per}) | {s['dense']:.2f}% | {s['prox']:.2f}% | "
                     f"{s['prox_retrained']:.2f}% | {s['magnitude']:.2f}% | {s['magnitude_retrained']:.2f}% |")
    lines += ["", f"Per-seed figures: `{os.path.basename(a.out)}.json`.", ""]
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
