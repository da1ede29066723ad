#!/usr/bin/env python3
"""Where the load of a .dcz goes: the main thread's CPU time (time.thread_time) of each stage of
``dcformat.InferenceSession``, next to ``onnxruntime.InferenceSession`` on the .onnx it came from.

CPU time of the calling thread is much steadier than wall time on a shared machine (other
processes' load slows it far less), so before/after figures of the Python side can be compared
across runs; it leaves out ORT's and numba's worker threads, so the ratios here are not the
issue 19 load ratio (``tools/bench_load_real.py`` measures that, in wall time).

Columns, each the best of --repeat:

* *ORT* -- ``onnxruntime.InferenceSession(model.onnx)``;
* *session* -- ``dcformat.InferenceSession(model.dcz)``;
* *open* -- ``dcformat.open`` + ``close``: the header, every record and the padding checked;
* *graph* -- also the graph section read, parsed and its references checked (``_graph_refs``);
* *prepare* -- ``runtime.prepare`` with the decoded arrays given (decode_many replaced by a lookup),
  so the open, graph, plan and filling in, without decoding;
* *decode* -- ``decode_many`` of every record (the decoders' share);
* *ORT part* -- ORT's InferenceSession on the prepared graph with the external initializers;
* *gc* -- runs of Python's garbage collector per *session* (mean over the --repeat sessions timed; a load
  pauses the collector, dcformat.runtime.gc_paused) and their main-thread CPU ms per session.

    PYTHONPATH=. .venv/bin/python tools/bench_load_stages.py /tmp/dcz/*.dcz --onnx-dir ~/.cache/dcz-bench
    PYTHONPATH=. .venv/bin/python tools/bench_load_stages.py FILES --root ../base    # another checkout's dcformat

A file named ``NAME.onnx.VARIANT.dcz`` (as bench_load_real.py --keep writes them) is compared with
``--onnx-dir/NAME.onnx``; without the .onnx the ORT columns are left out.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best(f, repeat: int) -> float:
    clock = time.thread_time
    out = []
    for _ in range(repeat):
        t = clock()
        f()
        out.append(clock() - t)
    return min(out) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help=".dcz files")
    ap.add_argument("--onnx-dir", default=os.path.expanduser("~/.cache/dcz-bench"))
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--decoder", default="numba", choices=("numba", "numpy"), help="DCZ_DECODER (default numba)")
    ap.add_argument("--root", help="import dcformat from this checkout instead")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.root) if args.root else ROOT)
    os.environ["DCZ_DECODER"] = args.decoder

    import onnxruntime as ort

    import dcformat
    from dcformat import reader as rd
    from dcformat import runtime

    print(f"dcformat from {os.path.dirname(os.path.dirname(os.path.abspath(dcformat.__file__)))}; main-thread CPU "
          f"ms, best of {args.repeat}")
    cpu = ["CPUExecutionProvider"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    print(f"{'file':52s} {'ORT':>6s} {'session':>7s} {'open':>6s} {'graph':>6s} {'prepare':>7s} {'decode':>6s} "
          f"{'ORT part':>8s} {'gc runs, ms':>12s}")
    for path in args.files:
        onnx_path = os.path.join(args.onnx_dir, os.path.basename(path).rsplit(".", 2)[0])
        has_onnx = os.path.exists(onnx_path)
        dcformat.InferenceSession(path, providers=cpu)  # warm: numba's kernels, the page cache

        def graph():
            r = rd.open(path)
            r._graph_refs({}, set())
            r.close()

        with rd.open(path) as r:
            names = list(r)
            arrays = r.decode_many(names)

        def decode():
            with rd.open(path) as r:
                r.decode_many(names)

        original = rd.DczReader.decode_many
        rd.DczReader.decode_many = lambda self, wanted: {k: arrays[k] for k in wanted}
        try:
            t_prep = best(lambda: runtime.prepare(path, hoist=True), args.repeat)
        finally:
            rd.DczReader.decode_many = original
        t_open = best(lambda: rd.open(path).close(), args.repeat)
        t_graph = best(graph, args.repeat)
        t_decode = best(decode, args.repeat) - t_open

        def ort_part():
            p = runtime.prepare(path, hoist=True)
            o = ort.SessionOptions()
            o.log_severity_level = 4
            names_ = list(p.external)
            values = [ort.OrtValue.ortvalue_from_numpy(p.external[n]) for n in names_]
            if names_:
                o.add_external_initializers(names_, values)
            data = p.model.SerializeToString()
            t = time.thread_time()
            ort.InferenceSession(data, sess_options=o, providers=cpu)
            return time.thread_time() - t

        t_ort_part = min(ort_part() for _ in range(args.repeat)) * 1e3
        runs = [0, 0.0, 0.0]  # collections, CPU seconds in them, start of the one under way

        def count(phase, info):
            if phase == "start":
                runs[2] = time.thread_time()
            else:
                runs[0] += 1
                runs[1] += time.thread_time() - runs[2]

        gc.callbacks.append(count)
        try:
            t_session = best(lambda: dcformat.InferenceSession(path, providers=cpu), args.repeat)
        finally:
            gc.callbacks.remove(count)
        t_ort = best(lambda: ort.InferenceSession(onnx_path, sess_options=so, providers=cpu), args.repeat) \
            if has_onnx else float("nan")
        print(f"{os.path.basename(path)[-52:]:52s} {t_ort:6.1f} {t_session:7.1f} {t_open:6.2f} {t_graph:6.2f} "
              f"{t_prep:7.2f} {t_decode:6.2f} {t_ort_part:8.1f} {runs[0] / args.repeat:5.1f} "
              f"{runs[1] * 1e3 / args.repeat:6.2f}", flush=True)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
