"""sha256 of the files written by small deterministic pipeline runs: run it before and after a change that must not
change behaviour (a refactor) and compare. One torch thread, deterministic algorithms, fixed seeds; ~20 s.

    .venv/bin/python tools/pipeline_bytes.py > after.json
    git show OLD:tools/pipeline_bytes.py | PYTHONPATH=/path/to/old/checkout .venv/bin/python - > before.json

Runs: a fixed plan (the demo's recipe, shorter), the accuracy budget with its sensitivity scan and a backoff, a conv
net with separate phases + neuron pruning + SGD + L1, pruning curves with retraining (hash of their JSON),
`dcz demo` and `dcz pipeline --data digits`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from converters import data as D  # noqa: E402
from converters import pipeline as P  # noqa: E402


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cli(argv) -> None:
    from converters.demo import main

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            if e.code:
                raise


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = {}
    tmp = tempfile.mkdtemp()
    ds = D.load_digits(0)
    ev = P.accuracy_fn(ds.x_test, ds.y_test)
    torch.manual_seed(0)
    s = P.Settings(sparsity=0.9, bits=5, epochs=8, retrain_epochs=2, finetune_epochs=2, lr=2e-3, l2=1e-5)
    P.deep_compress(P.digits_mlp(), (ds.x_train, ds.y_train), ev, s, out=f"{tmp}/a.dcz", dataset="d", source="s")
    out["fixed"] = sha(f"{tmp}/a.dcz")
    torch.manual_seed(0)
    s = P.Settings(max_accuracy_drop=1.0, epochs=6, retrain_epochs=1, finetune_epochs=1, schedule=(0.5, 1.0),
                   scan_sparsities=(0.5, 0.8, 0.95), scan_bits=(2, 4, 6), lr=3e-3)
    r = P.deep_compress(P.MLP((64, 64, 10)), (ds.x_train, ds.y_train), ev, s, out=f"{tmp}/b.dcz", dataset="d",
                        source="s")
    out["budget"], out["budget_attempts"] = sha(f"{tmp}/b.dcz"), len(r.attempts)
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    x, xt = ds.x_train.reshape(-1, 1, 8, 8), ds.x_test.reshape(-1, 1, 8, 8)
    s = P.Settings(sparsity="0.*=0.5,0.8", bits="0.*=6,4", prune_neurons="3.*=0.1", separate_phases=True, epochs=3,
                   retrain_epochs=1, finetune_epochs=1, optimizer="sgd", lr=1e-2, l1=1e-5, schedule=(0.5, 1.0))
    P.deep_compress(m, (x, ds.y_train), P.accuracy_fn(xt, ds.y_test), s, out=f"{tmp}/c.dcz", dataset="d", source="s")
    out["conv"] = sha(f"{tmp}/c.dcz")
    torch.manual_seed(0)
    m = P.MLP((64, 64, 10))
    P.train(m, (ds.x_train, ds.y_train), 3, lr=3e-3)
    c = P.pruning_curves(m, ev, fractions=(0.5, 0.9), data=(ds.x_train, ds.y_train), retrain_epochs=1)
    out["curves"] = hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()
    torch.use_deterministic_algorithms(False)  # as the commands themselves run
    cli(["demo", "-o", f"{tmp}/demo.dcz"])
    out["dcz demo"] = sha(f"{tmp}/demo.dcz")
    cli(["pipeline", "--model", "converters.pipeline:digits_mlp", "--data", "digits", "--epochs", "3", "--retrain-epochs",
         "1", "--finetune-epochs", "1", "--schedule", "0.5,1", "--threads", "1", "-q", "-o", f"{tmp}/cli.dcz"])
    out["dcz pipeline"] = sha(f"{tmp}/cli.dcz")
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
