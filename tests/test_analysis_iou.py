"""Figure 1 and IoU comparisons from recorded IoUs in small synthetic run folders."""
from __future__ import annotations

import io
from contextlib import redirect_stdout

import matplotlib.image
import numpy as np
import pytest
from scipy import stats

from analysis import compare_iou
from analysis.figure1 import build_figure1
from analysis.figure1 import main as figure1_main
from analysis.gather import SkippedRunWarning, gather_runs
from analysis.iou import IoUDistribution, ks_statistic, wasserstein
from scnet.records.iou import IoURecorder, IoURecords
from tests.test_analysis_tables import make_run, spec


def record(run_dir, values_by_tag, bins=1000):
    recorder = IoURecorder(bins=bins, reservoir_size=500, seed=0)
    for tag, values in values_by_tag.items():
        recorder.add(tag, np.asarray(values, dtype=np.float32))
    recorder.save(run_dir)
    return run_dir


@pytest.fixture()
def figure_runs(tmp_path):
    """Cascade run: 3 stages; SCNet runs (2 seeds): last stage + inference. Shares at 0.75 known exactly."""
    root = tmp_path / "runs"
    cascade = make_run(root, "cascade", spec("table2", "Cascade Mask R-CNN"), 0)
    record(cascade, {"train/stage0": [0.55] * 60 + [0.9] * 40,     # 60 of 100 at or below 0.75
                     "train/stage1": [0.75] * 30 + [0.8] * 70,     # 30 (0.75 counts as at or below)
                     "train/stage2": [0.7] * 10 + [0.95] * 90})   # 10  -> 100 of 300
    for seed, (low, high) in enumerate(((20, 80), (40, 60))):
        run = make_run(root, f"scnet_s{seed}", spec("table1", "SCNet"), seed)
        record(run, {"train/stage2": [0.6] * low + [0.85] * high,  # 60 of 200 pooled
                     "inference": [0.1] * 4 + [0.6] * 5 + [0.9] * 5,
                     "inference/matched": [0.6] * 5 + [0.9] * 5})   # 10 of 20 pooled
    return root


def test_figure1_shares_from_recordings(figure_runs, tmp_path):
    result = build_figure1(gather_runs(figure_runs), "smoke")
    without, with_sc, inference = (result.panel(p) for p in ("training w/o SC", "training w/ SC", "inference"))
    assert without.share(0.75) == pytest.approx(100 * 100 / 300)
    assert without.share(0.5) == pytest.approx(0.0)
    assert without.share(0.6) == pytest.approx(100 * 60 / 300)
    assert with_sc.share(0.75) == pytest.approx(100 * 60 / 200)
    assert len(with_sc.run_dirs) == 2 and with_sc.distribution.n == 200
    assert inference.share(0.75) == pytest.approx(50.0)
    assert inference.distribution.mean == pytest.approx(0.75, abs=1e-6)  # matched detections only
    assert (without.paper_share, with_sc.paper_share, inference.paper_share) == (49.1, 34.2, 38.5)
    shares = result.shares_frame().set_index("panel")
    assert shares.loc["training w/ SC", "share_le_0.75"] == pytest.approx(30.0)
    assert shares.loc["training w/o SC", "samples"] == 300
    markdown = result.to_markdown()
    assert "| training w/o SC | 1 | 300 | 0.800 | 49.1 | 33.3 | 0.0 | 20.0 | 23.3 | 33.3 |" in markdown
    # each seed's own share: 20 % and 40 % -> 30.0 +- 14.1 over seeds (the pooled share is also 30 %)
    mean, std, n = with_sc.share_over_seeds(0.75)
    assert (mean, n) == (pytest.approx(30.0), 2) and std == pytest.approx(np.std([20.0, 40.0], ddof=1))
    assert "| training w/ SC | 2 | 200 |" in markdown and "| 34.2 | 30.0 ± 14.1 |" in markdown
    assert shares.loc["training w/ SC", "seeds_std_share_le_0.75"] == pytest.approx(14.142, abs=1e-3)
    ordering = result.ordering()
    assert "paper training w/o SC (49.1) > inference (38.5) > training w/ SC (34.2)" in ordering
    assert "ours inference (50.0 ± 0.0) > training w/o SC (33.3) > training w/ SC (30.0 ± 14.1)" in ordering
    assert "(not the paper's order)" in ordering
    assert "training w/o SC - training w/ SC = +3.3 (no spread (single seed))" in ordering
    assert ordering in markdown


def test_figure1_ordering_is_judged_against_the_seeds_spread(tmp_path):
    root = tmp_path / "runs"
    for seed, (a, b, c) in enumerate(((50, 30, 40), (54, 36, 38))):  # percent at or below 0.75 per panel
        cascade = make_run(root, f"cascade_s{seed}", spec("table2", "Cascade Mask R-CNN"), seed)
        record(cascade, {"train/stage0": [0.6] * a + [0.9] * (100 - a)})
        scnet = make_run(root, f"scnet_s{seed}", spec("table1", "SCNet"), seed)
        record(scnet, {"train/stage2": [0.6] * b + [0.9] * (100 - b),
                       "inference/matched": [0.6] * c + [0.9] * (100 - c)})
    ordering = build_figure1(gather_runs(root), "smoke").ordering()
    # means 52 > 39 > 33; stds 2.83, 1.41, 4.24: 52 - 39 is beyond both, 39 - 33 = 6 is beyond 4.24
    assert "(the paper's order)" in ordering
    assert "training w/o SC - inference = +13.0 (beyond the seeds' spread)" in ordering
    assert "inference - training w/ SC = +6.0 (beyond the seeds' spread)" in ordering
    record(make_run(root, "scnet_s2", spec("table1", "SCNet"), 2), {"train/stage2": [0.6] * 48 + [0.9] * 52,
                                                                     "inference/matched": [0.6] * 39 + [0.9] * 61})
    ordering = build_figure1(gather_runs(root), "smoke").ordering()  # w/ SC now 38 +- 9.2: within the spread
    assert "inference - training w/ SC = +1.0 (≈ within the seeds' spread)" in ordering


def test_figure1_files_and_image(figure_runs, tmp_path):
    out = tmp_path / "figures" / "figure1.png"
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert figure1_main(["--runs", str(figure_runs), "--out", str(out)]) == 0
    assert "34.2" in stdout.getvalue()
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["figure1.pdf", "figure1.png", "figure1_shares.csv", "figure1_shares.md"]
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 400 and image.shape[1] > 1000
    red = (image[..., 0] > 0.8) & (image[..., 1] < 0.3) & (image[..., 2] < 0.3)
    assert red.sum() > 100  # the threshold annotations are drawn in red
    assert out.with_suffix(".pdf").read_bytes().startswith(b"%PDF")


def test_figure1_missing_panel_is_empty_not_zero(tmp_path):
    root = tmp_path / "runs"
    record(make_run(root, "cascade", spec("table2", "Cascade Mask R-CNN"), 0), {"train/stage0": [0.6, 0.9]})
    make_run(root, "scnet_no_iou", spec("table1", "SCNet"), 0)  # finished, but recorded no IoUs
    with pytest.warns(SkippedRunWarning, match="scnet_no_iou"):
        result = build_figure1(gather_runs(root), "smoke")
    assert result.panel("training w/o SC").share(0.75) == pytest.approx(50.0)
    assert result.panel("inference").share(0.75) is None
    line = next(l for l in result.to_markdown().splitlines() if l.startswith("| inference |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:4] == ["0", "0", ""] and cells[4] == "38.5" and all(c == "" for c in cells[5:])
    fig = result.plot()  # an empty panel still draws
    assert len(fig.axes) == 4


def test_distances_match_scipy_on_raw_values():
    rng = np.random.default_rng(0)
    a_raw, b_raw = rng.beta(6, 2, 4000), rng.beta(3, 2, 3000)
    recorder = IoURecorder(bins=1000, reservoir_size=100, seed=0)
    recorder.add("a", a_raw)
    recorder.add("b", b_raw)
    view = recorder.records()
    a, b = IoUDistribution.from_records(view, "a"), IoUDistribution.from_records(view, "b")
    assert wasserstein(a, b) == pytest.approx(stats.wasserstein_distance(a_raw, b_raw), abs=1e-3)
    assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a_raw, b_raw).statistic, abs=3e-3)
    assert a.mean == pytest.approx(a_raw.mean(), abs=1e-9)
    assert wasserstein(a, a) == pytest.approx(0.0, abs=1e-12) and ks_statistic(a, a) == 0.0


def test_compare_iou_runs_and_stages(figure_runs, tmp_path):
    out = tmp_path / "cmp.png"
    cascade, scnet = figure_runs / "cascade", figure_runs / "scnet_s0"
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        code = compare_iou.main([str(cascade), f"{scnet}:train/stage2", f"{scnet}:inference",
                                 f"{cascade}:train/stage0", "--out", str(out)])
    assert code == 0
    text = stdout.getvalue()
    # cascade default tags = all training stages: 100 of 300 at or below 0.75
    assert "| cascade:train/ | 300 | 0.800 | 0.0 | 20.0 | 20.0 | 20.0 | 23.3 | 33.3 |" in text
    assert "| scnet_s0:train/stage2 | 100 | 0.800 |" in text
    assert text.count("| cascade:train/ | scnet_s0") == 2  # pairs in the distances table
    assert matplotlib.image.imread(out).shape[0] > 100


def test_compare_iou_pair_values():
    recorder = IoURecorder(bins=100)
    recorder.add("x", [0.6] * 10)
    recorder.add("y", [0.8] * 10)
    view = recorder.records()
    dists = [IoUDistribution.from_records(view, t) for t in ("x", "y")]
    distances = compare_iou.distances_table(dists)
    assert distances.loc[0, "wasserstein"] == pytest.approx(0.2, abs=1e-9)
    assert distances.loc[0, "ks"] == pytest.approx(1.0)
    shares = compare_iou.shares_table(dists).set_index("spec")
    assert shares.loc["x", "le_0.6"] == 100.0 and shares.loc["y", "le_0.75"] == 0.0


def test_compare_iou_specs_and_errors(figure_runs, tmp_path, capsys):
    parsed = compare_iou.IoUSpec.parse("some/run:train/stage1")
    assert (str(parsed.run_dir), parsed.tags) == ("some/run", "train/stage1")
    odd = tmp_path / "run:with colon"
    odd.mkdir()
    assert compare_iou.IoUSpec.parse(str(odd)).tags is None
    assert compare_iou.main([str(figure_runs / "cascade"), f"{figure_runs / 'scnet_s0'}:val/"]) == 2
    assert "no IoU tag or tag prefix 'val/'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_iou.main([str(figure_runs / "cascade")])


def test_inference_only_run_defaults_to_inference(tmp_path):
    run = record(tmp_path / "r", {"inference": [0.2, 0.4]})
    dist = compare_iou.IoUSpec.parse(str(run)).load()
    assert dist.label == "r:inference" and dist.n == 2
    assert IoURecords.load(run).tags == ["inference"]
