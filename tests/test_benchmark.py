"""The benchmark command on a small case: the settings it runs, sam2's generator in a
process of its own on the same masks, the precision comparison, and the figures it
derives, checked against a fake clock and hand-made masks whose figures are known."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from maskadapter.cli import benchmark, benchmark_compare, benchmark_help, benchmark_rate, benchmark_run

STAGES = {
    "sam2_encode",
    "clip_encode",
    "mask_generation",
    "text_encode",
    "adapter_classification",
    "painting_overlay",
    "export",
    "end_to_end",
    "relabel",
    "first_click",
    "later_click",
}
TICK = 0.25  # seconds per reading of the fake clock (a binary fraction: sums stay exact)
USER, SYSTEM = 0.5, 0.125  # CPU seconds per reading of the fake CPU counter
SMALL_CLIP = ["--short-side", "224", "--max-size", "320"]  # not the 800-pixel preset: the figures are about timing


class FakeTime:
    """Stands for the ``time`` module inside ``maskadapter.cli.benchmark_run``: ``perf_counter``
    gives the listed readings in turn, or ``TICK`` more on every reading when none are listed."""

    def __init__(self, readings: list[float] | None = None) -> None:
        self.readings = None if readings is None else iter(readings)
        self.count = 0

    def perf_counter(self) -> float:
        self.count += 1
        if self.readings is not None:
            return next(self.readings)
        return (self.count - 1) * TICK


def _fake_cpu(monkeypatch, readings: list[tuple[float, float]] | None = None) -> list[int]:
    """``benchmark_run.cpu_seconds`` replaced: the listed (user, system) readings, or
    (USER, SYSTEM) more on every reading. Returns a one-item list counting the readings."""
    count = [0]
    listed = None if readings is None else iter(readings)

    def cpu_seconds():
        count[0] += 1
        if listed is not None:
            return next(listed)
        return ((count[0] - 1) * USER, (count[0] - 1) * SYSTEM)

    monkeypatch.setattr(benchmark_run, "cpu_seconds", cpu_seconds)
    return count


def _counting_network_time(monkeypatch) -> list[int]:
    """``benchmark_run.NetworkTime`` that also counts the outermost network calls its hooks
    see (one item per instance; a decode's prompt encoder runs inside it); its own
    timing is untouched."""
    counts: list[int] = []

    class Counting(benchmark_run.NetworkTime):
        def __init__(self, sam2, clock):
            counts.append(0)
            super().__init__(sam2, clock)

        def _enter(self, module, args):
            counts[-1] += self._depth == 0
            super()._enter(module, args)

    monkeypatch.setattr(benchmark_run, "NetworkTime", Counting)
    return counts


def test_clock_adds_wall_and_cpu_seconds_per_stage(monkeypatch):
    # readings: stage a from 10 to 12.5, b from 20 to 20.75, a again from 30 to 31
    monkeypatch.setattr(benchmark_run, "time", FakeTime([10.0, 12.5, 20.0, 20.75, 30.0, 31.0]))
    _fake_cpu(monkeypatch, [(1.0, 0.5), (3.0, 0.75), (4.0, 1.0), (4.5, 1.125), (5.0, 1.25), (5.25, 1.5)])
    clock = benchmark_run.Clock(torch.device("cpu"))
    for name in ("a", "b", "a"):
        with clock(name):
            pass
    assert clock.times == {"a": 2.5 + 1.0, "b": 0.75}
    # a: (3 - 1, 0.75 - 0.5) + (5.25 - 5, 1.5 - 1.25); b: (4.5 - 4, 1.125 - 1)
    assert clock.cpu == {"a": (2.25, 0.5), "b": (0.5, 0.125)}


def test_network_time_counts_only_sam2s_three_networks(monkeypatch):
    sam2 = torch.nn.Module()
    sam2.image_encoder, sam2.sam_prompt_encoder = torch.nn.Identity(), torch.nn.Identity()
    sam2.sam_mask_decoder, sam2.other = torch.nn.Identity(), torch.nn.Identity()

    def work():
        sam2.sam_prompt_encoder(torch.zeros(1))  # clock 1.0 -> 1.5
        sam2.other(torch.zeros(1))  # not a network: no reading
        sam2.sam_mask_decoder(torch.zeros(1))  # clock 2.0 -> 3.25
        return "found"

    # readings: start 0, prompt encoder 1.0 / 1.5, decoder 2.0 / 3.25, end 4.0
    fake = FakeTime([0.0, 1.0, 1.5, 2.0, 3.25, 4.0])
    monkeypatch.setattr(benchmark_run, "time", fake)
    wall, network, result = benchmark_run._timed_network(sam2, benchmark_run.Clock(torch.device("cpu")), work)
    assert (wall, network, result) == (4.0, 0.5 + 1.25, "found")
    # the hooks are gone: the networks run again without reading the clock
    sam2.sam_mask_decoder(torch.zeros(1))
    sam2.image_encoder(torch.zeros(1))
    assert fake.count == 6


@pytest.mark.slow
def test_benchmark_compares_with_sam2_in_its_own_process(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(benchmark_run, "time", FakeTime())
    _fake_cpu(monkeypatch)
    out = tmp_path / "bench.json"
    args = ["--tiny-random", "--width", "160", "--height", "120", "--points-per-side", "4", "--precision", "float32"]
    args += SMALL_CLIP
    # hole filling off: sam2 skips it without its compiled extension, so the work is equal
    args += ["--min-mask-region-area", "0", "--compare-precision", "--batch-images", "2", "--json", str(out)]
    assert benchmark.main(args + ["--cache-dir", str(tmp_path / "cache")]) == 0
    figures = json.loads(out.read_text())
    assert set(figures["stages_s"]) == set(figures["stages_cpu_s"]) == STAGES
    assert figures["precision"] == "float32" and figures["image"] == [120, 160]
    # sam2's generator ran elsewhere (its own figures, its own clock) and found the masks we found
    reference = figures["sam2"]
    assert set(reference) == {"wall_s", "user_s", "sys_s", "masks"}
    assert figures["masks"] >= 1 and reference["masks"] == figures["masks"]
    # our end to end took one tick of the fake clock: the speed-up is sam2's real wall time / TICK
    assert figures["stages_s"]["end_to_end"] == TICK
    assert figures["speedup_vs_sam2"] == round(reference["wall_s"] / TICK, 2)
    # the other precision: bf16 on the same photo, masks matched one to one (exact
    # figures on controlled masks: test_compare_precision_figures_on_known_masks)
    change = figures["precision_change"]
    assert change["precisions"] == ["float32", "bfloat16"]
    assert change["matched_masks"] >= 1
    # 2 batch images in one tick: 2 / 0.25 images per second
    assert (figures["batch_images"], figures["batch_s"], figures["batch_images_per_s"]) == (2, TICK, 8.0)
    # every command's --help, timed in new processes before the models loaded
    helps = figures["help_s"]
    assert set(helps["commands"]) == set(benchmark_help.COMMANDS) and helps["target_s"] == 1.5
    assert all(r["exit"] == 0 and r["seconds"] > 0 for r in [helps["python"], *helps["commands"].values()])
    printed = capsys.readouterr().out
    assert "sam2's generator alone (own process, float32)" in printed and "float32 vs bfloat16" in printed
    assert "--help, new process (median of 3; target under 1.5 s)" in printed
    assert f"{round(reference['wall_s'] / TICK, 2):.2f}x faster" in printed


def test_benchmark_runs_the_demo_settings_and_derives_its_figures(tmp_path, monkeypatch):
    """On a fake clock (TICK seconds per reading) and a fake CPU counter ((USER, SYSTEM)
    per reading) every figure is known: a stage with no reading inside takes one tick;
    mask generation holds two readings per network forward (enter, leave) and the two of
    its own wall time."""
    monkeypatch.setattr(benchmark_run, "time", FakeTime())
    cpu_readings = _fake_cpu(monkeypatch)
    forwards = _counting_network_time(monkeypatch)
    out = tmp_path / "bench.json"
    args = ["--tiny-random", "--width", "96", "--height", "64", "--points-per-side", "2", "--no-sam2", *SMALL_CLIP]
    args += ["--batch-images", "0", "--no-help-times", "--json", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert benchmark.main(args) == 0
    figures = json.loads(out.read_text())
    # the demo's settings (hole filling included), quality filters opened for random weights
    assert figures["mask_settings"] == {
        "points_per_side": 2,
        "points_per_batch": 64,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "stability_score_offset": 1.0,
        "box_nms_thresh": 0.7,
        "min_mask_region_area": 100,
    }
    assert "sam2" not in figures and "precision_change" not in figures and "batch_images" not in figures
    assert "help_s" not in figures
    assert figures["image"] == [64, 96] and figures["working_hw"] == [64, 96]

    assert len(forwards) == 1  # one mask generation was timed
    n = forwards[0]
    assert n >= 1  # the decoder ran at least once
    # mask generation: clock start, then _timed_network's start, 2 readings per outermost call, its end, clock end
    wall, network = (2 * n + 1) * TICK, n * TICK
    expected = {name: TICK for name in STAGES} | {"mask_generation": (2 * n + 3) * TICK}
    assert figures["stages_s"] == expected
    assert figures["stages_cpu_s"] == {name: [USER, SYSTEM] for name in STAGES}
    assert figures["mask_generation_outside_networks"] == round(1 - network / wall, 4)
    assert figures["relabel_speedup"] == 1.0  # one tick each
    # the progressive path: a 2 x 2 grid runs in two steps (1 point, then the other 3); one
    # clock reading per step's picture after the start
    progressive = figures["progressive"]
    assert progressive["steps"] == [{"points": 1, "seconds": TICK}, {"points": 4, "seconds": 2 * TICK}]
    assert progressive["first_vs_one_shot"] == round(TICK / expected["end_to_end"], 4)
    assert progressive["total_vs_one_shot"] == round(2 * TICK / expected["end_to_end"], 4)
    # FLOPs: counted per network stage; mask generation's from the decoder's per prompt (4 prompts)
    counted = figures["stage_flops"]
    assert set(counted) == {"sam2_encode", "clip_encode", "mask_generation", "text_encode", "adapter_classification"}
    assert all(v > 0 for v in counted.values()) and counted["mask_generation"] % 4 == 0
    rate = figures["matmul_rate_flops"][figures["precision"]]  # the networks' precision (auto: bf16 on AMX)
    assert figures["efficiency"]["sam2_encode"] == round(counted["sam2_encode"] / TICK / rate, 3)
    assert figures["efficiency"]["mask_decoder_networks"] == round(counted["mask_generation"] / (n * TICK) / rate, 3)
    assert set(figures["cpu"]["flags"]) <= set(benchmark_rate.FAMILY_FLAGS)
    # the process's CPU: the counter's last reading, after two per stage
    assert cpu_readings[0] == 2 * len(STAGES) + 1
    user, system = 2 * len(STAGES) * USER, 2 * len(STAGES) * SYSTEM  # 11.0 and 2.75
    assert figures["process_cpu_s"] == {"user": user, "sys": system, "sys_share": SYSTEM / USER}


def test_help_times_run_every_commands_help_in_a_new_process():
    """``help_s``: each command's ``--help`` and ``python -c pass`` ran in new processes
    and answered 0; the times are only checked to be there (speed is never asserted)."""
    figures = benchmark_help.help_figures(runs=1)
    assert (figures["target_s"], figures["runs"]) == (1.5, 1)
    assert figures["python"]["command"] == "python -c pass"
    assert list(figures["commands"]) == ["label", "batch", "evaluate", "benchmark", "video"]
    assert figures["commands"]["label"]["command"] == "python -m maskadapter --help"
    assert figures["commands"]["video"]["command"] == "python -m maskadapter video --help"
    for record in [figures["python"], *figures["commands"].values()]:
        assert record["exit"] == 0 and "error" not in record, record
        assert len(record["runs_s"]) == 1 and record["seconds"] == record["runs_s"][0] > 0
    rows = dict(benchmark_help.help_rows(figures))
    assert rows["--help, new process (median of 1; target under 1.5 s)"].startswith("python itself ")
    assert rows["  maskadapter --help"].endswith(" s") and rows["  maskadapter batch --help"].endswith(" s")


def test_help_times_keep_the_median_and_record_a_failing_process():
    three = benchmark_help.time_process(["-c", "pass"], runs=3)
    assert len(three["runs_s"]) == 3 and three["seconds"] == sorted(three["runs_s"])[1]
    failed = benchmark_help.time_process(["-c", "import sys; sys.exit('no help here')"], runs=3)
    # the first failure ends the repeats: no time, its exit status and stderr's last line
    assert failed == {"command": failed["command"], "exit": 1, "runs_s": [], "error": "no help here"}
    figures = {"target_s": 1.5, "runs": 3, "python": three, "commands": {"label": failed, "video": {"seconds": 1.5}}}
    rows = benchmark_help.help_rows(figures)
    assert rows[1:] == [
        ("  maskadapter --help", "failed (exit 1: no help here)"),
        ("  maskadapter video --help", "1.50 s (not under 1.5 s)"),
    ]


def test_masks_are_matched_one_to_one_by_iou():
    a = np.zeros((3, 10, 10), dtype=bool)
    a[0, :5], a[1, 5:], a[2, :, :2] = True, True, True
    b = np.zeros((3, 10, 10), dtype=bool)
    b[0, 5:, :9] = True  # IoU 0.9 with a[1]
    b[1, :4] = True  # IoU 0.8 with a[0]
    b[2, 9:] = True  # IoU 0.2 with a[1]: below 0.5, unmatched
    pairs = benchmark_compare.match_masks(torch.from_numpy(a).flatten(1), torch.from_numpy(b).flatten(1))
    assert pairs.tolist() == [[1, 0], [0, 1]]


def test_matching_is_greedy_best_first_and_keeps_an_iou_of_exactly_the_limit():
    def masks(*spans):
        out = torch.zeros(len(spans), 10, dtype=torch.bool)
        for row, (start, end) in enumerate(spans):
            out[row, start:end] = True
        return out

    a = masks((0, 4), (0, 6))  # 4 and 6 pixels
    b = masks((0, 5), (0, 2))  # 5 and 2 pixels
    # IoU: a0-b0 4/5, a1-b0 5/6 (the best: taken first), a0-b1 2/4 = 0.5 exactly, a1-b1 2/6
    assert benchmark_compare.match_masks(a, b).tolist() == [[1, 0], [0, 1]]
    assert benchmark_compare.match_masks(a, b, least=0.51).tolist() == [[1, 0]]
    assert benchmark_compare.match_masks(a[:0], b).shape == benchmark_compare.match_masks(a, b[:0]).shape == (0, 2)


class _Store:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes

    def open(self, image) -> str:
        return "session"


class _FakeSegmenter:
    """What ``compare_precision`` uses of a segmenter, with masks, best classes and a
    label map chosen per precision (float32 when ``amp_dtype`` is None, else bf16)."""

    def __init__(self, runs: dict[str, tuple[torch.Tensor, list[int], np.ndarray]]) -> None:
        self.runs = runs
        self.amp_dtype = None
        self.store = _Store(1)

    @property
    def arithmetic(self) -> str:
        return "float32" if self.amp_dtype is None else "bfloat16"

    def segment_automatic(self, session, vocabulary, settings, mode):
        return SimpleNamespace(label_map=self.runs[self.arithmetic][2])

    def automatic_masks(self, session, settings):
        return SimpleNamespace(masks=self.runs[self.arithmetic][0])

    def mask_probabilities(self, session, masks, vocabulary):
        return torch.eye(3)[self.runs[self.arithmetic][1]]  # one-hot: argmax is the class


def test_compare_precision_figures_on_known_masks():
    """14 x 14 masks: matching reads every 7th pixel of the flattened masks (columns 0
    and 7); the pixel counts are then exact."""
    h = w = 14
    a = torch.zeros(3, h, w, dtype=torch.bool)
    a[0, :7] = True  # top half, 98 pixels
    a[1, 7:] = True  # bottom half, 98 pixels
    a[2, :, :4] = True  # left 4 columns, 56 pixels
    b = torch.zeros(3, h, w, dtype=torch.bool)
    b[0, 6:] = True  # rows 6-13, 112 pixels: a1 plus row 6; sampled IoU with a1 14/16
    b[1, :7, :13] = True  # a0 without its last column, 91 pixels: sampled IoU with a0 1.0
    b[2, :, 13] = True  # the last column: no sampled pixel, matched with nothing
    # sampled IoUs below 0.5: a2-b0 8/22, a2-b1 7/21, a0-b0 2/28; so pairs (a0, b1), (a1, b0)
    map_a = np.zeros((h, w), np.int32)
    map_b = map_a.copy()
    map_b[:7, :7] = 1  # 49 of 196 pixels change
    fake = _FakeSegmenter({"float32": (a, [2, 0, 1], map_a), "bfloat16": (b, [1, 2, 0], map_b)})
    change = benchmark_compare.compare_precision(fake, np.zeros((h, w, 3), np.uint8), None, None, "semantic")
    assert change == {
        "precisions": ["float32", "bfloat16"],
        "masks": [3, 3],
        "matched_masks": 2,
        # differing / union pixels: (a0, b1) 7 / 98, (a1, b0) 14 / 112 -> 21 / 210
        "matched_pixels_changed": 0.1,
        # best classes: a0 2 = b1 2; a1 0 != b0 1
        "matched_labels_changed": 1,
        "label_map_pixels_changed": 0.25,
    }
    assert fake.amp_dtype is None  # the segmenter itself was left as it was


def test_video_figures_on_a_short_clip(tmp_path, capsys):
    """``--video-frames``: a synthetic clip tracked instead of the image path; its figures."""
    out = tmp_path / "video.json"
    args = ["--tiny-random", "--video-frames", "5", "--width", "96", "--height", "64", "--json", str(out), *SMALL_CLIP]
    assert benchmark.main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    video = json.loads(out.read_text())["video"]
    assert (video["frames"], video["size"], video["objects"], video["working_side"]) == (5, [96, 64], 1, 640)
    assert video["frames_per_s"] == pytest.approx(5 / video["seconds"], rel=0.01)
    assert 0 < video["peak_rss_first_tenth_mb"] <= video["peak_rss_mb"]
    assert video["peak_rss_growth"] == pytest.approx(video["peak_rss_mb"] / video["peak_rss_first_tenth_mb"], abs=1e-3)
    assert "video: tracking" in capsys.readouterr().out


def test_flops_are_counted_per_stage_and_the_rate_is_measured():
    flops = benchmark_rate.StageFlops()
    a, b = torch.ones(8, 16), torch.ones(16, 4)
    for _ in range(2):
        with flops("product"):
            a @ b
    assert flops.counted == {"product": 2 * (2 * 8 * 16 * 4)}
    assert benchmark_rate.efficiency(3e9, 2.0, 2e9) == 0.75
    assert benchmark_rate.matmul_rate(torch.device("cpu"), seconds=0.05) > 1e8  # any CPU does 0.1 GFLOP/s
