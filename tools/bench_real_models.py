"""Real pretrained models nobody here wrote, converted without retraining: size, measured fidelity and
a task-level result for ORT's dynamic int8 (per tensor, and per channel where ORT offers it),
`dcconvert --lossless` and `dcconvert` with its defaults (plus looser budgets with --budgets).

Models (all shipped inside PyPI wheels; never used in CI):
  * PP-OCRv4 text detector, recognizer and the v2 direction classifier (rapidocr-onnxruntime)
  * Silero VAD, 16 kHz opset-15 export (silero-vad)
  * Magika standard_v3_3 file-type classifier (magika)

Setup (once; a separate venv beside the test venv, git-ignored):
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install rapidocr-onnxruntime          # the OCR pipeline and its models
    .venv-bench/bin/pip install --no-deps silero-vad magika   # only their model files are used
    apt-get install espeak-ng                                 # real speech for Silero (optional)
Run (from the repository root, with the project's venv):
    PYTHONPATH=$PWD .venv/bin/python tools/bench_real_models.py [--only det,rec,cls,vad,magika] [--out DIR]
        [--budgets 0.02,0.05] [--extra NAME=FLAGS ...]
(--budgets: more dcconvert rows at those --max-error values; --extra: a row of dcconvert with those
flags, e.g. --extra "per-tensor=--channel-scales off". "x int8" is ORT int8's bytes over the row's.)

Calibration inputs are built here from data like the models' own, as a demanding user would give
them (CALIB_SAMPLES: 32 rendered text pages, 64 rendered lines, 64 chunks of a synthetic
voiced/unvoiced signal; Magika: 6 files of each of the 14 kinds of file of this machine,
magika_split); fidelity is measured on held-out inputs from the same generators, disjoint from the
calibration set (other seeds; the other files of every kind): dcformat.fidelity's relative L2 error
over the set, worst-sample cosine, decision error and changed decisions of probability outputs; and
task results: OCR text on 24 rendered pages (full RapidOCR pipeline: det + cls + rec) against the
fp32 pipeline's and the rendered text, with and without the spaces inside a line (fp32 itself puts
those where they were rendered on only a few pages: they are the recogniser's least certain
decisions), VAD speech decisions (p > 0.5) per 32 ms chunk and the largest
probability change, Magika labels of the held-out files.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-bench")
SITE = glob.glob(os.path.join(VENV, "lib", "python3*", "site-packages"))
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
REUSE = False
REUSE_ONLY = False
VAD_CHUNKS = 0
WORDS = ("the quick brown fox jumps over lazy dog model file format compressed weights runtime pruning "
         "sharing huffman codebook layer tensor budget error signal text line invoice total amount date "
         "number 2026 12 345 67.89 ONNX PP-OCR Deep Compression").split()


def site(*parts) -> str:
    if not SITE:
        sys.exit(f"no {VENV}: see the setup lines at the top of {__file__}")
    return os.path.join(SITE[0], *parts)


MODELS = {
    "det": ("PP-OCRv4 det", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "rec": ("PP-OCRv4 rec", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    "cls": ("PP-OCR cls", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "vad": ("Silero VAD", "silero_vad/data/silero_vad_16k_op15.onnx"),
    "magika": ("Magika v3.3", "magika/models/standard_v3_3/model.onnx"),
}


# ---------------------------------------------------------------------------------------- data


def _font(size):
    from PIL import ImageFont

    return ImageFont.truetype(FONT, size)


def text_lines(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(2, 5))) for _ in range(n)]


def line_image(text: str, height: int = 48, seed: int = 0):
    """A dark text line on a light background, PIL RGB, about ``height`` px high."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    f = _font(int(height * 0.6))
    w = int(f.getlength(text)) + 24
    bg = tuple(int(x) for x in rng.integers(215, 256, 3))
    img = Image.new("RGB", (w, height), bg)
    ImageDraw.Draw(img).text((12, height * 0.15), text, fill=tuple(int(x) for x in rng.integers(0, 60, 3)), font=f)
    return img


def page_image(lines: list[str], size: int = 320, seed: int = 0):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(x) for x in rng.integers(215, 256, 3)))
    d = ImageDraw.Draw(img)
    f = _font(22)
    for k, t in enumerate(lines):
        d.text((10, 20 + 50 * k), t, fill=(20, 20, 20), font=f)
    return img


def _norm(img, w=None, h=None) -> np.ndarray:
    a = np.asarray(img.convert("RGB"), np.float32) / 255.0
    if w is not None:
        from PIL import Image

        a = np.asarray(img.convert("RGB").resize((w, h), Image.BILINEAR), np.float32) / 255.0
    return ((a - 0.5) / 0.5).transpose(2, 0, 1)


def ocr_sets(key: str, n: int, seed: int) -> dict:
    if key == "det":
        return {"x": np.stack([_norm(page_image(text_lines(5, seed + i), 320, seed + i)) for i in range(n)])}
    if key == "rec":
        ims = []
        for i, t in enumerate(text_lines(n, seed)):
            img = line_image(t, 48, seed + i)
            ims.append(_norm(img, 320, 48))
        return {"x": np.stack(ims)}
    ims = [_norm(line_image(t, 48, seed + i), 192, 48) for i, t in enumerate(text_lines(n, seed))]
    return {"x": np.stack(ims)}


def audio(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """Speech spoken by espeak-ng (spoken()) where it is installed, else voiced syllables (harmonics of a
    gliding f0 with formant-like weights, 4 Hz envelope) between stretches of quiet noise: Silero hears
    no speech in those (0 of 625 chunks over 0.5), so its decisions are then a weak test."""
    s = spoken(seconds, seed, sr)
    if s is not None:
        return s
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    out = 0.003 * rng.standard_normal(t.size)
    pos = 0.3
    while pos < seconds - 0.6:
        dur = rng.uniform(0.6, 1.6)
        m = (t >= pos) & (t < pos + dur)
        tt = t[m] - pos
        f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * 3 * tt))
        ph = 2 * np.pi * np.cumsum(f0) / sr
        formants = rng.uniform(300, 3000, 3)
        sig = sum(np.exp(-((k * f0.mean() - formants[:, None]) ** 2).min(0) / 2e5) * np.sin(k * ph) for k in range(1, 25))
        env = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * tt) ** 2 + 0.2, 0, 1)
        out[m] += 0.25 * sig / np.abs(sig).max() * env
        pos += dur + rng.uniform(0.3, 1.2)
    return out.astype(np.float32)


def spoken(seconds: float, seed: int, sr: int = 16000) -> np.ndarray | None:
    """Real speech for Silero: sentences of WORDS spoken by espeak-ng (``apt-get install espeak-ng``;
    voice, speed and pitch drawn from ``seed``), resampled to ``sr``, between 0.3-1.5 s pauses of quiet
    noise; None where espeak-ng is not installed (then audio() is the synthetic signal alone)."""
    import shutil
    import wave

    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = 0.003 * rng.standard_normal(n)
    pos = int(rng.uniform(0.2, 0.8) * sr)
    with tempfile.TemporaryDirectory() as d:
        while pos < n - sr // 2:
            text = " ".join(rng.choice(WORDS, rng.integers(4, 10)))
            wav = os.path.join(d, "s.wav")
            subprocess.run([exe, "-v", str(rng.choice(["en", "en-us", "en-gb-x-rp", "de", "fr"])),
                            "-s", str(int(rng.integers(130, 190))), "-p", str(int(rng.integers(30, 70))),
                            "-w", wav, text], check=True, capture_output=True)
            with wave.open(wav) as w:
                rate = w.getframerate()
                x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768.0
            x = np.interp(np.arange(int(x.size * sr / rate)) * rate / sr, np.arange(x.size), x)
            x = x[: n - pos] * rng.uniform(0.3, 1.0) / max(np.abs(x).max(), 1e-9)
            out[pos:pos + x.size] += x
            pos += x.size + int(rng.uniform(0.3, 1.5) * sr)
    return out.astype(np.float32)


VAD_CONTEXT = 64  # Silero v5 at 16 kHz takes each 512-sample chunk after the last 64 samples of the one before
# (silero_vad.utils_vad.OnnxWrapper); without them it hears no speech at all


def vad_sets(n: int, seed: int, model: str | None = None) -> dict:
    """``n`` consecutive 32 ms chunks, each after the VAD_CONTEXT samples before it; with ``model``, each with
    the state the fp32 model carries into it (as in streaming use: with zero states and one LSTM step per
    chunk the recurrent weights see h = 0)."""
    a = np.concatenate([np.zeros(VAD_CONTEXT, np.float32), audio(n * 512 / 16000 + 1, seed)])
    chunks = np.stack([a[i * 512:(i + 1) * 512 + VAD_CONTEXT] for i in range(n)])
    states = np.zeros((n, 2, 1, 128), np.float32)
    if model is not None:
        sess, state = session(model), np.zeros((2, 1, 128), np.float32)
        for i in range(n):
            states[i] = state
            _, state = sess.run(None, {"input": chunks[i:i + 1], "state": state, "sr": np.array(16000, np.int64)})
    return {"input": chunks, "state": states, "sr": np.full(n, 16000, np.int64)}


def magika_features(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        data = f.read()
    beg = data[:4096].lstrip()[:1024]
    end = data[-4096:].rstrip()[-1024:]
    x = np.full(2048, 256, np.int32)
    x[: len(beg)] = np.frombuffer(beg, np.uint8)
    if end:
        x[2048 - len(end):] = np.frombuffer(end, np.uint8)
    return x


def magika_files() -> list[list[str]]:
    """Files of this machine by kind (one list per kind: Python, JSON-module Python, .conf, copyright texts,
    executables, fonts, shared libraries, Markdown, spec files, results, licences, C headers, PIL's
    Python, cv2's libraries), each sorted, at most 24 a kind."""
    pats = ["/usr/lib/python3*/*.py", "/usr/lib/python3*/json/*.py", "/etc/*.conf", "/usr/share/doc/*/copyright",
            "/usr/bin/*", "/usr/share/fonts/truetype/dejavu/*.ttf", "/usr/lib/x86_64-linux-gnu/*.so*",
            os.path.join(ROOT, "*.md"), os.path.join(ROOT, "spec", "*"), os.path.join(ROOT, "results", "*"),
            "/usr/share/common-licenses/*", "/usr/include/*.h", site("PIL", "*.py"), site("cv2", "*.so*")]
    kinds = []
    for p in pats:
        got = sorted(f for f in glob.glob(p) if os.path.isfile(f) and os.path.getsize(f) >= 16)
        if got:
            kinds.append(got[:24])
    return kinds


MAGIKA_CALIB_PER_KIND = 6


def magika_split(kinds: list[list[str]], per_kind: int = MAGIKA_CALIB_PER_KIND) -> tuple[list[str], list[str]]:
    """(calibration files, held-out files), disjoint, both covering every kind: a kind's even-numbered
    files go to calibration (at most ``per_kind``), all others are held out. The calibration list is
    ordered round-robin over the kinds, so that dcconvert's own held-out quarter (the last samples)
    covers many kinds too, not the last few."""
    calib = [k[0::2][:per_kind] for k in kinds]
    chosen = {f for c in calib for f in c}
    rr = [c[i] for i in range(max(map(len, calib), default=0)) for c in calib if i < len(c)]
    return rr, [f for k in kinds for f in k if f not in chosen]


def magika_sets(files: list[str]) -> dict:
    return {"bytes": np.stack([magika_features(f) for f in files])}


# ---------------------------------------------------------------------------------------- variants


def run_cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", "import sys; from converters.cli import main; main(sys.argv[1:])", *map(str, args)],
                          capture_output=True, text=True, env=env, **kw)


# calibration samples handed to dcconvert (it fits on the first three quarters and checks its plan on the
# last quarter) and the benchmark's own held-out samples (other seeds: other text, other audio; Magika:
# other files of every kind, magika_split), for each model
CALIB_SAMPLES = {"det": 32, "rec": 64, "cls": 64, "vad": 64}
HELD_SAMPLES = {"det": 12, "rec": 32, "cls": 32, "vad": 64}
OCR_PAGES = 24  # rendered pages of 3 lines read by the full OCR pipeline (seeds unlike both sets above)

BUDGETS: list[float] = []
EXTRA: list[tuple[str, list[str]]] = []


def variants(key: str, src: str, calib_path: str, out: str) -> dict:
    """{variant: {"path", "bytes", "seconds", "report"}} for int8 (per tensor and per channel), lossless,
    the default and the rows of --budgets / --extra."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    res = {"fp32": {"path": src, "bytes": os.path.getsize(src), "seconds": 0.0}}
    plain = constants_as_initializers(src, out, key)
    for name, per_channel in (("int8", False), ("int8 per-channel", True)):
        p = os.path.join(out, f"{key}.{name.replace(' ', '-')}.onnx")
        t = time.perf_counter()
        if REUSE and os.path.exists(p):
            res[name] = {"path": p, "bytes": os.path.getsize(p), "seconds": 0.0}
            continue
        try:
            quantize_dynamic(plain, p, weight_type=QuantType.QInt8, per_channel=per_channel)
            session(p)  # ORT runs what it wrote
        except Exception as e:  # noqa: BLE001 - where ORT does not offer it, the row says so
            print(f"[{key}] ORT {name}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
            continue
        res[name] = {"path": p, "bytes": os.path.getsize(p), "seconds": time.perf_counter() - t}
    p = os.path.join(out, f"{key}.int8-static-per-channel.onnx")
    t = time.perf_counter()
    if REUSE and os.path.exists(p):
        res["int8 static per-channel"] = {"path": p, "bytes": os.path.getsize(p), "seconds": 0.0}
    else:
        try:  # ORT's per-channel int8 for convolutions: static QDQ, calibrated on the same inputs as dcconvert
            static_per_channel(plain, p, calib_path)
            session(p)
            res["int8 static per-channel"] = {"path": p, "bytes": os.path.getsize(p), "seconds": time.perf_counter() - t}
        except Exception as e:  # noqa: BLE001
            print(f"[{key}] ORT static per-channel int8: {str(e).splitlines()[0][:200]}", file=sys.stderr)
    runs = [("lossless", ["--lossless"]), ("default", [])]
    runs += [(f"max-error {b:g}", ["--max-error", str(b)]) for b in BUDGETS]
    runs += EXTRA
    for name, extra in runs:
        p = os.path.join(out, f"{key}.{name.replace(' ', '-')}.dcz")
        if REUSE and os.path.exists(p + ".json"):  # --reuse: converted by an earlier run with the same settings
            with open(p + ".json") as f:
                res[name] = json.load(f)
            continue
        if REUSE_ONLY:  # --reuse-only: rows not converted by an earlier run are left out
            continue
        t = time.perf_counter()
        r = run_cli([src, "-o", p, "--json", "--calibration", calib_path, *extra])
        if r.returncode:
            raise SystemExit(f"dcconvert failed on {src}: {r.stderr.strip()}")
        res[name] = {"path": p, "bytes": os.path.getsize(p), "seconds": time.perf_counter() - t,
                     "report": json.loads(r.stdout)}
        with open(p + ".json", "w") as f:
            json.dump(res[name], f)
    return res


def static_per_channel(src: str, dst: str, calib_path: str) -> None:
    """onnxruntime.quantization.quantize_static, QDQ format, int8 weights with one scale per output
    channel (per_channel=True), activations calibrated (MinMax) on the calibration samples."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from dcformat import inputs as inp

    m = onnx.load(src)
    decl = inp.declared_inputs(m)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # per-axis DequantizeLinear needs opset 13
        from onnx import version_converter

        src = dst + ".opset13.onnx"
        onnx.save(version_converter.convert_version(m, 13), src)
    with np.load(calib_path) as z:
        calib = {k: z[k] for k in z.files}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= inp.num_samples(calib, decl):
                return None
            self.i += 1
            return inp.sample_feeds(calib, decl, self.i - 1)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)


def constants_as_initializers(src: str, out: str, key: str) -> str:
    """quantize_dynamic only quantizes initializers; Paddle2ONNX exports keep weights in Constant nodes."""
    import onnx

    m = onnx.load(src)
    keep, moved = [], 0
    for node in m.graph.node:
        val = next((a for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if node.op_type == "Constant" and val is not None and len(node.output) == 1:
            t = onnx.TensorProto()
            t.CopyFrom(val.t)
            t.name = node.output[0]
            m.graph.initializer.append(t)
            moved += 1
        else:
            keep.append(node)
    if not moved:
        return src
    del m.graph.node[:]
    m.graph.node.extend(keep)
    p = os.path.join(out, f"{key}.initializers.onnx")
    onnx.save(m, p)
    return p


def session(path):
    import onnxruntime as ort

    import dcformat

    if path.endswith(".dcz"):
        return dcformat.InferenceSession(path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def outputs(path, data: dict) -> dict:
    import onnx

    from dcformat import inputs as inp

    sess = session(path)
    decl = inp.declared_from_session(sess)
    if not path.endswith(".dcz"):
        decl = [d for d in inp.declared_inputs(onnx.load(path, load_external_data=False))] or decl
    return inp.run_set(sess, data, decl)


def fidelity_of(ref_path, path, data) -> dict:
    from dcformat import fidelity

    return fidelity.compare(outputs(ref_path, data), outputs(path, data), metric="decision")


def decoded_onnx(v: dict, out: str, key: str, name: str) -> str:
    if not v["path"].endswith(".dcz"):
        return v["path"]
    from dcformat import runtime

    p = os.path.join(out, f"{key}.{name}.decoded.onnx")
    runtime.save_onnx(v["path"], p)
    return p


# ---------------------------------------------------------------------------------------- tasks


OCR_WORKER = r"""
import json, sys
import numpy as np
from PIL import Image
from rapidocr_onnxruntime import RapidOCR
cfg = json.loads(sys.argv[1])
eng = RapidOCR(det_model_path=cfg["det"], rec_model_path=cfg["rec"], cls_model_path=cfg["cls"])
texts = []
for p in cfg["images"]:
    res, _ = eng(np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1])
    texts.append(" | ".join(r[1] for r in (res or [])))
print(json.dumps(texts))
"""


def ocr_task(models: dict, out: str, n: int = OCR_PAGES, mixes: dict | None = None) -> dict:
    """OCR text of the full pipeline on ``n`` rendered pages for each variant (all three models swapped);
    ``mixes``: {row name: {"det": variant, "rec": variant, "cls": variant}}, rows mixing variants."""
    imgs = []
    truth = []
    for i in range(n):
        lines = text_lines(3, 9000 + i)
        truth.append(" | ".join(lines))
        p = os.path.join(out, f"page{i}.png")
        page_image(lines, 480, 9000 + i).save(p)
        imgs.append(p)
    texts = {}
    rows = {n: dict.fromkeys(("det", "rec", "cls"), n) for n in models["det"] if all(n in models[k] for k in ("rec", "cls"))}
    rows.update(mixes or {})
    for name, pick in rows.items():
        cfg = {k: decoded_onnx(models[k][pick[k]], out, k, pick[k].replace(" ", "-")) for k in ("det", "rec", "cls")}
        cfg["images"] = imgs
        r = subprocess.run([os.path.join(VENV, "bin", "python"), "-c", OCR_WORKER, json.dumps(cfg)],
                           capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"OCR worker failed: {r.stderr.strip()[-2000:]}")
        texts[name] = json.loads(r.stdout.strip().splitlines()[-1])
    base = texts["fp32"]
    def bare(s: str) -> str:
        return s.replace(" ", "")

    # the spaces inside a line are the recogniser's least certain decisions (fp32 itself puts them where they
    # were rendered on only some pages), so the words and the spaces are counted apart
    res = {name: {"identical": sum(a == b for a, b in zip(t, base)), "of": n,
                  "same_words": sum(bare(a) == bare(b) for a, b in zip(t, base)),
                  "correct": sum(bare(a) == bare(b) for a, b in zip(t, truth)),
                  "exact": sum(a == b for a, b in zip(t, truth))}
           for name, t in texts.items()}
    res["example"] = {"truth": truth[0], **{k: v[0] for k, v in texts.items()}}
    return res


def vad_task(v: dict, seconds: float = 20.0) -> dict:
    a = np.concatenate([np.zeros(VAD_CONTEXT, np.float32), audio(seconds, 777)])
    probs = {}
    for name, x in v.items():
        sess = session(x["path"])
        state = np.zeros((2, 1, 128), np.float32)
        ps = []
        for i in range(0, a.size - 512 - VAD_CONTEXT + 1, 512):  # each chunk after the 64 samples before it
            p, state = sess.run(None, {"input": a[None, i:i + 512 + VAD_CONTEXT], "state": state,
                                       "sr": np.array(16000, np.int64)})
            ps.append(float(p.reshape(-1)[0]))
        probs[name] = np.array(ps)
    base = probs["fp32"]
    return {name: {"decisions_same": float(np.mean((p > 0.5) == (base > 0.5))), "max_prob_diff": float(np.abs(p - base).max()),
                   "speech_same": int(((p > 0.5) & (base > 0.5)).sum()), "speech_fp32": int((base > 0.5).sum()),
                   "speech_chunks": int((p > 0.5).sum()), "chunks": int(p.size)} for name, p in probs.items()}


def magika_task(v: dict, data: dict) -> dict:
    labels = {}
    for name, x in v.items():
        y = np.concatenate(outputs(x["path"], data)["target_label"])
        labels[name] = y.argmax(-1)
    base = labels["fp32"]
    return {name: {"labels_same": int((lab == base).sum()), "of": int(base.size)} for name, lab in labels.items()}


# ---------------------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="det,rec,cls,vad,magika")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "dcz-bench-real"), help="work folder")
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    ap.add_argument("--reuse", action="store_true", help="reuse conversions an earlier run left in --out (int8 ones too; "
                    "their seconds are then 0)")
    ap.add_argument("--reuse-only", action="store_true", help="--reuse, and leave out the rows no earlier run converted")
    ap.add_argument("--budgets", default="", help="more dcconvert rows at these --max-error values, e.g. 0.02,0.05")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=FLAGS",
                    help="a dcconvert row with these flags, e.g. 'per-tensor=--channel-scales off'")
    ap.add_argument("--vad-chunks", type=int, default=1024, help="Silero: calibrate on this many consecutive chunks "
                    "with the states the fp32 model carries, as it runs when streaming (held out: 64 more); 0: "
                    "CALIB_SAMPLES chunks with zero states (then its recurrent weights see h = 0)")
    ap.add_argument("--no-ocr", action="store_true", help="skip the OCR pipeline task")
    ap.add_argument("--ocr-mix", action="append", default=[], metavar="NAME=det:VARIANT,rec:VARIANT,cls:VARIANT",
                    help="an OCR pipeline row mixing variants, e.g. 'det 0.05=det:max-error 0.05,rec:default,cls:default'")
    a = ap.parse_args(argv)
    global REUSE, REUSE_ONLY, VAD_CHUNKS
    REUSE, REUSE_ONLY = a.reuse or a.reuse_only, a.reuse_only
    VAD_CHUNKS = a.vad_chunks
    BUDGETS[:] = [float(x) for x in a.budgets.split(",") if x]
    EXTRA[:] = [(e.split("=", 1)[0], e.split("=", 1)[1].split()) for e in a.extra]
    os.makedirs(a.out, exist_ok=True)
    keys = a.only.split(",")
    mcal, mheld = magika_split(magika_files())
    results, models = {}, {}
    for key in keys:
        label, rel = MODELS[key]
        src = site(*rel.split("/"))
        if key in ("det", "rec", "cls"):
            calib, held = ocr_sets(key, CALIB_SAMPLES[key], 100), ocr_sets(key, HELD_SAMPLES[key], 500)
        elif key == "vad":
            if VAD_CHUNKS:  # --vad-chunks N: N chunks of streamed audio with their carried states
                calib, held = vad_sets(VAD_CHUNKS, 1, src), vad_sets(HELD_SAMPLES[key], 2, src)
            else:
                calib, held = vad_sets(CALIB_SAMPLES[key], 1), vad_sets(HELD_SAMPLES[key], 2)
        else:
            calib, held = magika_sets(mcal), magika_sets(mheld)
        cpath = os.path.join(a.out, f"{key}.calib.npz")
        np.savez(cpath, **calib)
        print(f"[{label}] converting ...", file=sys.stderr, flush=True)
        v = variants(key, src, cpath, a.out)
        models[key] = v
        fid = {name: fidelity_of(src, x["path"], held) for name, x in v.items() if name != "fp32"}
        results[key] = {"label": label, "variants": {
            name: {"bytes": x["bytes"], "seconds": round(x["seconds"], 1),
                   **({"held_out_rel_l2": fid[name]["max_rel_l2"], "held_out_min_cosine": fid[name]["min_cosine"],
                       "held_out_decision": fid[name]["error"], "held_out_changed": _changed(fid[name])}
                      if name in fid else {}),
                   **({"calib_rel_l2": x["report"]["fidelity"].get("error", x["report"]["fidelity"]["max_rel_l2"]),
                       "shared": sum(r["action"] == "pruned+shared" for r in x["report"]["layers"]),
                       "per_channel": sum(r.get("scales") == "channel" for r in x["report"]["layers"]),
                       "tensors": len(x["report"]["layers"]),
                       "convert_seconds": round(x["report"]["seconds"], 1),
                       "seconds_per_mparam": round(x["report"]["seconds"] * 1e6 / max(x["report"]["totals"]["params"], 1), 1),
                       "search_fit_rel_l2": ((x["report"]["fidelity"].get("search") or {}).get("verified_error")),
                       "search_held_out_rel_l2": ((x["report"]["fidelity"].get("search") or {}).get("held_out_error")),
                       "metric": x["report"]["fidelity"].get("metric", "rel_l2"),
                       } if "report" in x else {})}
            for name, x in v.items()}}
        if key == "vad":
            results[key]["task"] = vad_task(v)
        elif key == "magika":
            results[key]["task"] = magika_task(v, held)  # held-out files only (none is in the calibration set)
    if all(k in models for k in ("det", "rec", "cls")) and not a.no_ocr:
        results["ocr"] = {"label": "PP-OCR pipeline (det+cls+rec)", "task": ocr_task(models, a.out, mixes={
            m.split("=", 1)[0]: dict(kv.split(":", 1) for kv in m.split("=", 1)[1].split(",")) for m in a.ocr_mix})}
    table(results)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(results, f, indent=1, default=str)


def _changed(fid: dict) -> str | None:
    """'changed/decisions' over the outputs that hold probabilities (dcformat.fidelity.output_kind)."""
    outs = [o for o in fid["outputs"].values() if o.get("decisions")]
    if not outs:
        return None
    return f"{sum(o['decisions_changed'] for o in outs)}/{sum(o['decisions'] for o in outs)}"


def _task_text(key, res, name) -> str:
    t = res.get("task")
    if not t:
        return ""
    t = t[name]
    if key == "vad":
        return (f"VAD decisions {t['decisions_same']:.1%} same ({t['speech_fp32']}/{t['chunks']} speech), "
                f"max dp {t['max_prob_diff']:.3f}")
    if key == "magika":
        return f"labels {t['labels_same']}/{t['of']} same"
    return f"text {t['identical']}/{t['of']} identical ({t['correct']} exact)"


def table(results: dict) -> None:
    print("| model | variant | bytes | x fp32 | x int8 | rel. L2 (held-out) | decision error (held-out) "
          "| decisions changed (held-out) | min cosine | calib. error | search: fit / held-out "
          "| tensors shared (per-channel) | task | seconds | s per M params |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for key, res in results.items():
        if key == "ocr":
            continue
        fp = res["variants"]["fp32"]["bytes"]
        i8 = res["variants"].get("int8", {}).get("bytes")
        for name, v in res["variants"].items():
            cos = v.get("held_out_min_cosine")
            shared = "-" if "shared" not in v else f"{v['shared']}/{v['tensors']} ({v.get('per_channel', 0)})"
            x8 = "-" if not i8 else f"{i8 / v['bytes']:.2f}"
            print(f"| {res['label']} | {name} | {v['bytes']:,} | {fp / v['bytes']:.2f} | "
                  f"{x8} | "
                  f"{_f(v.get('held_out_rel_l2'))} | {_f(v.get('held_out_decision'))} | {v.get('held_out_changed') or '-'} | "
                  f"{'-' if cos is None else f'{cos:.6f}'} | {_f(v.get('calib_rel_l2'))} | "
                  f"{_f(v.get('search_fit_rel_l2'))} / {_f(v.get('search_held_out_rel_l2'))} | "
                  f"{shared} | {_task_text(key, res, name)} | {v['seconds']} | {v.get('seconds_per_mparam', '-')} |")
    if "ocr" in results:
        t = results["ocr"]["task"]
        print()
        print("| PP-OCR pipeline (det + cls + rec swapped together) | text identical to fp32 | same words as fp32 "
              "(spaces ignored) | the rendered text (spaces ignored) | the rendered text, spaces too |")
        print("|---|---:|---:|---:|---:|")
        for name in [n for n in t if n != "example"]:
            r, of = t[name], t[name]["of"]
            print(f"| {name} | {r['identical']}/{of} | {r.get('same_words', '-')}/{of} | {r['correct']}/{of} | "
                  f"{r.get('exact', '-')}/{of} |")
        print(f"\nexample: {json.dumps(t['example'])}")


def _f(x) -> str:
    return "-" if x is None else f"{x:.3g}"


if __name__ == "__main__":
    main()
