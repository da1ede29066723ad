"""dcinspect --plot's drawing: many centroids as a rug, not a wall of lines; small tensors folded
into one bar; bytes in units; progress reported; few, non-overlapping value ticks."""

import numpy as np
import pytest

import dcformat
from dcformat import inspect as insp

pytest.importorskip("matplotlib")


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(0)
    tensors = [
        dcformat.encode_codebook("conv2.weight", np.linspace(-0.2, 0.2, 200).astype(np.float32),
                                 rng.integers(0, 200, (64, 32, 3, 3)), encoding="codebook-dense"),
        dcformat.encode_codebook("fc.weight", np.linspace(-1, 1, 8).astype(np.float32) * 1e-4,
                                 rng.integers(0, 8, (100, 200)), encoding="codebook-dense"),
    ]
    tensors += [dcformat.encode(f"const{i}", np.array([i + 1], np.int64)) for i in range(40)]
    p = tmp_path / "m.dcz"
    dcformat.write(p, tensors)
    return p


def test_figure_design(model):
    from matplotlib.ticker import EngFormatter

    from dcformat import plot

    rep = insp.inspect_dcz(model)
    calls = []
    with dcformat.open(model) as r:
        fig = plot.figure(rep, r, progress=lambda *a: calls.append(a))
    bars, *hists = fig.axes
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert labels[0] == "40 smaller tensors" and set(labels[1:]) == {"conv2.weight", "fc.weight"}
    assert isinstance(bars.xaxis.get_major_formatter(), EngFormatter)  # "12 kB", not a 1e6 offset
    by_title = {h.get_title().split("\n")[0]: h for h in hists}
    many, few = by_title["conv2.weight"], by_title["fc.weight"]
    assert "ticks below" in many.get_title() and len(many.lines) <= 3  # a rug (+ the zero line), not 200 lines
    rug = [ln for ln in many.lines if ln.get_marker() == "|"]
    assert len(rug) == 1 and len(rug[0].get_xdata()) == 200
    assert "red lines" in few.get_title() and len(few.lines) == 8
    fig.canvas.draw()
    for h in hists:  # at most 6 value ticks, labels that do not overlap
        ticks = [t for t in h.get_xticklabels() if t.get_text()]
        assert 2 <= len(ticks) <= 6
        boxes = sorted((t.get_window_extent() for t in ticks), key=lambda b: b.x0)
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in ticks]
    assert [c[:2] for c in calls] == [(0, 2), (1, 2), (2, 2)]
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.mark.parametrize("small", [300, 100])
def test_legend_and_labels_stay_clear_of_the_bars(tmp_path, small):
    """The longest bar can be any row (the folded small tensors, drawn last at the bottom; or a codebook
    layer while raw stacks of other rows end where it ends): the legend stands beside the bars, never
    over one, and every bar's byte label lies inside the axes."""
    from dcformat import plot

    rng = np.random.default_rng(1)
    tensors = [dcformat.encode_codebook("conv.weight", np.linspace(-1, 1, 16).astype(np.float32),
                                        rng.integers(0, 16, (256, 256)), encoding="codebook-dense"),
               dcformat.encode("fc.bias", rng.standard_normal(2000).astype(np.float32), encoding="raw")]
    tensors += [dcformat.encode(f"norm{i}.scale", rng.standard_normal(63).astype(np.float32), encoding="raw")
                for i in range(small)]
    p = tmp_path / "m.dcz"
    dcformat.write(p, tensors)
    fig = plot.figure(insp.inspect_dcz(p))
    bars = fig.axes[0]
    fig.canvas.draw()
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert f"{small} smaller tensors" in labels
    legend = bars.get_legend().get_window_extent()
    assert not any(legend.overlaps(b.get_window_extent()) for b in bars.patches if b.get_width() > 0)
    box = bars.get_window_extent()
    texts = [t for t in bars.texts if t.get_text().strip().endswith("%)")]
    assert len(texts) == len(labels)
    assert all(box.x0 <= t.get_window_extent().x0 and t.get_window_extent().x1 <= box.x1 for t in texts), \
        [t.get_text() for t in texts if t.get_window_extent().x1 > box.x1]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_histogram_titles_do_not_run_into_each_other(tmp_path):
    """Three histograms in a row, each titled with a long name, its sparsity, centroid count and how the
    centroids are drawn: no title overlaps its neighbour's (the 'centroids as ticks below' line ran into
    the next title on PP-OCR cls)."""
    from dcformat import plot

    rng = np.random.default_rng(2)
    tensors = [dcformat.encode_codebook(f"backbone.stage{i}.block{i}.conv_depthwise_weights",
                                        np.linspace(-1, 1, 65).astype(np.float32),
                                        rng.integers(0, 65, (128, 64, 3, 3)), encoding="codebook-dense")
               for i in range(3)]
    p = tmp_path / "m.dcz"
    dcformat.write(p, tensors)
    with dcformat.open(p) as r:
        fig = plot.figure(insp.inspect_dcz(p), r)
    fig.canvas.draw()
    titles = [h.title.get_window_extent() for h in fig.axes[1:]]
    assert len(titles) == 3
    assert not any(a.overlaps(b) for i, a in enumerate(titles) for b in titles[i + 1:])
    import matplotlib.pyplot as plt

    plt.close(fig)
