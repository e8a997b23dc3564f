"""Video: clips made here (moving squares), tracked by the tiny SAM-2 and named by
Mask-Adapter; outputs read back with OpenCV, PIL and pycocotools; every bad input.

Random SAM-2 weights track nothing in particular, so ``ColourSAM`` makes SAM-2's video
masks deterministic the way ``SyntheticSAM`` does for images: the real networks run,
and each object's mask is then replaced by the pixels of its colour, the colour found
under its prompt (the click, the box's centre or the mask) on its starting frame.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import av
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from sam2.sam2_video_predictor import SAM2VideoPredictor

from maskadapter import InputError
from maskadapter.cli import video as video_cli
from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.results import with_others
from maskadapter.engine.tracker import Tracker
from maskadapter.engine.video import VideoPrompt, parse_prompts, track_clip
from maskadapter.engine.video_source import VideoLimits, open_clip_file

H, W = 120, 160
RED, BLUE = (230, 30, 30), (30, 60, 230)
SIDE = 30  # the squares' side


def red_box(t: int) -> tuple[int, int, int, int]:
    """XYXY of the red square on frame t: moving right 6 pixels a frame."""
    return 10 + 6 * t, 20, 10 + 6 * t + SIDE, 20 + SIDE


def blue_box(t: int) -> tuple[int, int, int, int] | None:
    """The blue square enters on frame 5 and moves down 4 pixels a frame."""
    return None if t < 5 else (110, 30 + 4 * (t - 5), 110 + SIDE, 30 + 4 * (t - 5) + SIDE)


def drawn(t: int) -> np.ndarray:
    frame = np.full((H, W, 3), 200, np.uint8)
    for box, colour in ((red_box(t), RED), (blue_box(t), BLUE)):
        if box is not None:
            x0, y0, x1, y1 = box
            frame[y0:y1, x0:x1] = colour
    return frame


def shape(box) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    if box is not None:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = True
    return mask


def write_clip(path, frames: int, fps: int = 10, draw: Callable[[int], np.ndarray] = drawn) -> None:
    """An H.264 MP4 of ``frames`` frames ``draw(t)`` ((H, W, 3) uint8 RGB; by default the
    moving squares), lossless so that colours stay exact."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv444p"
        stream.options = {"qp": "0"}
        for t in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(draw(t), format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_clip(folder / "twelve.mp4", 12)
    write_clip(folder / "twenty.mp4", 20)
    return folder


@pytest.fixture(scope="module")
def small_sam2():
    """A tiny random SAM-2 taking 256-pixel inputs, for tracking: the same modules and
    code paths as the 1024-pixel tiny model (which the image predictor needs), with
    memory attention over 16x16 instead of 64x64 positions per memory frame."""
    from hydra.utils import instantiate

    torch.manual_seed(0)
    return instantiate(_tiny_sam2_config(256).model, _recursive_=True).eval()


def on_small(sam2, make=None):
    """A ``make_tracker`` for ``track_clip`` that builds ``make`` (``Tracker`` by default)
    on ``sam2`` instead of the segmenter's model."""
    make = make or Tracker
    return lambda _sam, frames, hw: make(sam2, frames, hw)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


class ColourSAM:
    """Patches ``SAM2VideoPredictor._run_single_frame_inference``: the real step runs,
    then the object's low-res mask logits become +10 on its colour's pixels, -10 elsewhere."""

    MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def __init__(self, monkeypatch) -> None:
        self.colours: dict[int, torch.Tensor] = {}  # id(the object's output dict) -> RGB
        original = SAM2VideoPredictor._run_single_frame_inference

        def step(predictor, inference_state, output_dict, frame_idx, batch_size, *args, **kwargs):
            out, masks = original(predictor, inference_state, output_dict, frame_idx, batch_size, *args, **kwargs)
            rgb = (inference_state["images"][frame_idx].float().cpu() * self.STD + self.MEAN) * 255  # (3, 1024, 1024)
            points, given = kwargs.get("point_inputs"), kwargs.get("mask_inputs")
            if given is not None:
                self.colours[id(output_dict)] = rgb[:, given[0, 0] > 0.5].median(1).values
            elif points is not None:
                xy, labels = points["point_coords"][0].cpu(), points["point_labels"][0].cpu()
                x, y = (xy[labels == 1][0] if (labels == 1).any() else xy[labels >= 2].mean(0)).long().tolist()
                self.colours[id(output_dict)] = rgb[:, y, x]
            colour = self.colours[id(output_dict)]
            low = F.avg_pool2d(rgb[None], 4)[0]  # (3, 256, 256)
            near = (low - colour.view(3, 1, 1)).abs().amax(0) < 40
            logits = torch.where(near, 10.0, -10.0)[None, None].to(masks.dtype)
            out["pred_masks"] = logits.to(out["pred_masks"].device)
            return out, logits.to(masks.device)

        monkeypatch.setattr(SAM2VideoPredictor, "_run_single_frame_inference", step)


def test_clicked_objects_follow_their_shapes_and_memory_stays_windowed(segmenter, clips, small_sam2, monkeypatch):
    ColourSAM(monkeypatch)
    made = []

    def tracker(_sam, *args):
        made.append(Tracker(small_sam2, *args))
        return made[-1]

    clip = open_clip_file(clips / "twelve.mp4")
    prompts = [VideoPrompt(0, 1, ((25, 35, 1),)), VideoPrompt(6, 2, (), (105, 34, 145, 70))]
    result = track_clip(segmenter, clip, segmenter.vocabulary("ball, box"), prompts=prompts, make_tracker=tracker)
    assert result.frames == list(range(12)) and result.mode == "points"
    one, two = result.tracks
    assert (one.id, one.first_frame, two.id, two.first_frame) == (1, 0, 2, 6)
    for t in range(12):
        assert iou(one.mask(t, (H, W)), shape(red_box(t))) > 0.8, t
        if t < 6:
            assert t not in two.masks
        else:
            assert iou(two.mask(t, (H, W)), shape(blue_box(t))) > 0.8, t
    # SAM-2's memory: at most its window of past frames per object, whatever the length
    state = made[0].state
    assert all(len(out["non_cond_frame_outputs"]) <= made[0].window for out in state["output_dict_per_obj"].values())
    assert made[0].window == 16


def test_a_click_on_a_later_frame_corrects_the_object(segmenter, clips, small_sam2, monkeypatch):
    ColourSAM(monkeypatch)
    clip = open_clip_file(clips / "twelve.mp4")
    # object 1 starts on red, and a click on frame 8 moves it to the blue square
    prompts = [VideoPrompt(0, 1, ((25, 35, 1),)), VideoPrompt(8, 1, ((125, 60, 1),))]
    result = track_clip(
        segmenter, clip, segmenter.vocabulary("ball"), prompts=prompts, every=2, make_tracker=on_small(small_sam2)
    )
    assert result.frames == [0, 2, 4, 6, 8, 10]
    (track,) = result.tracks
    for t in (0, 2, 4, 6):
        assert iou(track.mask(t, (H, W)), shape(red_box(t))) > 0.8
    for t in (8, 10):
        assert iou(track.mask(t, (H, W)), shape(blue_box(t))) > 0.8


class ColourDetections:
    """``segment_automatic`` of a frame: one segment per colour square present."""

    def __init__(self, segmenter, parts: bool = False) -> None:
        self.segmenter, self.frames, self.modes, self.parts = segmenter, [], [], parts

    def __call__(self, session, vocabulary, mask_settings=None, mode="semantic", *args, **kwargs):
        pixels = session.image.astype(int)
        self.frames.append(pixels)
        self.modes.append(mode)
        segments = []
        for colour in (RED, BLUE):
            mask = (np.abs(pixels - colour).max(2) < 40)
            if mask.any():
                segments.append(type("Found", (), {"mask": mask})())
                if self.parts:  # SAM-2 also finds parts of an object: its left half, listed first
                    part = mask & (np.cumsum(mask, 1) <= mask.sum(1, keepdims=True) // 2)
                    segments.insert(0, type("Found", (), {"mask": part})())
        return type("Result", (), {"segments": segments})()


def test_automatic_tracks_match_new_objects_and_names_come_from_several_frames(
    segmenter, clips, small_sam2, monkeypatch
):
    ColourSAM(monkeypatch)
    small = on_small(small_sam2)
    detections = ColourDetections(segmenter)
    monkeypatch.setattr(segmenter, "segment_automatic", detections)
    clip = open_clip_file(clips / "twelve.mp4")
    vocabulary = segmenter.vocabulary("ball, box, sky")
    result = track_clip(segmenter, clip, vocabulary, redetect_every=3, make_tracker=small)
    assert len(detections.frames) == 4  # frames 0, 3, 6, 9
    red, blue = result.tracks  # red found at 0 and matched at 3, 6, 9; blue found when it is first looked for
    assert (red.first_frame, blue.first_frame) == (0, 6)
    assert red.named_on == [0, 3, 6, 9] and blue.named_on == [6, 9]
    assert all(iou(blue.mask(t, (H, W)), shape(blue_box(t))) > 0.8 for t in range(6, 12))
    # names: the mean of Mask-Adapter's probabilities on the naming frames, recomputed
    classes = with_others(vocabulary)
    for track in result.tracks:
        rows = []
        for index in track.named_on:
            session = segmenter.store.open(drawn(index))
            rows.append(segmenter.mask_probabilities(session, track.mask(index, (H, W))[None], classes)[0].numpy())
        mean = np.mean(rows, axis=0)
        best = int(mean[:3].argmax())
        assert mean.argmax() == best  # three classes: no "others" column to win
        assert track.label == vocabulary.labels[best]
        assert track.score == pytest.approx(mean[best], abs=1e-3)  # bf16: batched here, one by one there
        assert [name for name, _ in track.top5] == [vocabulary.labels[i] for i in np.argsort(-mean, kind="stable")]
    assert set(detections.modes) == {"per_mask"}  # objects are found one per mask
    # parts of an object found as well (each square's left half) are not new objects
    monkeypatch.setattr(segmenter, "segment_automatic", ColourDetections(segmenter, parts=True))
    with_parts = track_clip(segmenter, clip, vocabulary, redetect_every=3, make_tracker=small)
    assert [(t.first_frame, t.named_on) for t in with_parts.tracks] == [(0, [0, 3, 6, 9]), (6, [6, 9])]
    # a cap on tracks: the blue square is found but not tracked, and the result says so
    capped = track_clip(segmenter, clip, vocabulary, every=3, redetect_every=1, max_objects=1, make_tracker=small)
    assert len(capped.tracks) == 1
    assert capped.notes == ["2 more objects were found but not tracked: at most 1 tracks"]


def test_cli_writes_the_overlay_video_label_maps_and_tracks(clips, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(clips / "twenty.mp4"), "--vocab", "ball, box", "--out", str(out), "--tiny-random"]
    args += ["--points-per-side", "6", "--max-objects", "1", "--cache-dir", str(tmp_path / "cache")]
    assert video_cli.main(args) == 0, capsys.readouterr().err
    capture = cv2.VideoCapture(str(out / "twenty_overlay.mp4"))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    assert len(frames) == 20 and frames[0].shape == (H, W, 3)
    labels = sorted((out / "twenty_labels").iterdir())
    assert [p.name for p in labels] == [f"{t:06d}.png" for t in range(20)]
    assert np.asarray(Image.open(labels[0])).shape == (H, W)
    data = json.loads((out / "twenty_tracks.json").read_text())
    assert data["video"] | {"seconds": 2.0} == {
        "file": "twenty.mp4", "width": W, "height": H, "fps": 10.0, "frames": 20, "seconds": 2.0,
        "every": 1, "processed": 20, "output_fps": 10.0,
    }
    assert data["labels"] == ["ball", "box"] and len(data["objects"]) == 1
    for obj in data["objects"]:
        for entry in obj["frames"]:
            rle = entry["segmentation"]
            mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert mask.shape == (H, W) and int(mask.sum()) == entry["area"]
    assert "through 20 frames" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--video-max-frames", "5"], "twenty.mp4 has 20 frames: at most 5"),
        (["--every", "0"], "every must be a whole number of frames, at least 1"),
        (["--prompts", "[{\"frame\": 0}]"], "prompt 1 must have frame, object and points and/or box"),
        (["--prompts", "{"], "--prompts is neither a JSON file nor JSON"),
    ],
)
def test_cli_refuses_bad_clips_and_flags_in_one_line(clips, tmp_path, capsys, extra, message):
    args = [str(clips / "twenty.mp4"), "--vocab", "ball", "--out", str(tmp_path / "o"), "--tiny-random", *extra]
    assert video_cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err


def test_not_a_video_and_missing_files(tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert video_cli.main([str(text), "--vocab", "ball", "--out", str(tmp_path / "o"), "--tiny-random"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: notes.mp4 is not a video file FFmpeg can read (Invalid data found when processing input)"
    )
    with pytest.raises(InputError, match="no such file"):
        open_clip_file(tmp_path / "gone.mp4")
    still = tmp_path / "still.png"
    Image.fromarray(drawn(0)).save(still)
    clip = open_clip_file(still)  # a picture is a one-frame clip
    assert clip.frame_count == 1


def test_gif_and_limits(tmp_path):
    gif = tmp_path / "moving.gif"
    pictures = [Image.fromarray(drawn(t)) for t in range(6)]
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=100, loop=0)
    clip = open_clip_file(gif)
    assert clip.hw == (H, W) and clip.frame_count == 6
    frames = list(clip.frames(every=2))
    assert [i for i, _ in frames] == [0, 2, 4]
    assert np.abs(frames[1][1].astype(int) - drawn(2)).max() < 40  # GIF's palette
    with pytest.raises(InputError, match="is 160x120: its long side may be at most 100 pixels"):
        open_clip_file(gif, VideoLimits(max_side=100))
    with pytest.raises(InputError, match="lasts 0.6 s: at most 0.5 s"):
        open_clip_file(gif, VideoLimits(max_seconds=0.5))


def test_prompts_are_checked(segmenter, clips):
    with pytest.raises(InputError, match="prompts must be a list"):
        parse_prompts({"frame": 0})
    with pytest.raises(InputError, match="prompt 1 has neither points nor a box"):
        parse_prompts([{"frame": 0, "object": 1}])
    with pytest.raises(InputError, match="label of point 1 must be 1"):
        parse_prompts([{"frame": 0, "object": 1, "points": [[1, 2, 5]]}])
    assert parse_prompts([{"frame": 2, "object": 3, "box": [9, 8, 1, 2]}]) == [VideoPrompt(2, 3, (), (1, 2, 9, 8))]
    # two prompts for one frame and object are one: their points in order, the box kept
    given = [
        {"frame": 0, "object": 1, "points": [[5, 6, 1]]},
        {"frame": 0, "object": 2, "points": [[7, 8, 1]]},
        {"frame": 0, "object": 1, "points": [[9, 10, 0]], "box": [1, 2, 30, 40]},
    ]
    assert parse_prompts(given) == [
        VideoPrompt(0, 1, ((5, 6, 1), (9, 10, 0)), (1, 2, 30, 40)),
        VideoPrompt(0, 2, ((7, 8, 1),)),
    ]
    with pytest.raises(InputError, match="prompts 1 and 2 give two boxes for object 1 on frame 0"):
        parse_prompts([{"frame": 0, "object": 1, "box": [1, 2, 3, 4]}, {"frame": 0, "object": 1, "box": [5, 6, 7, 8]}])
    with pytest.raises(InputError, match="prompt 1: frame and object must be whole numbers"):
        parse_prompts([{"frame": [0], "object": 1, "points": [[5, 6, 1]]}])
    clip = open_clip_file(clips / "twelve.mp4")
    vocabulary = segmenter.vocabulary("ball")
    for prompt, message in [
        (VideoPrompt(12, 1, ((5, 5, 1),)), "frame must be 0 to 11, got 12"),
        (VideoPrompt(1, 1, ((5, 5, 1),)), "frame 1 is skipped"),
        (VideoPrompt(0, 0, ((5, 5, 1),)), "object id must be a whole number >= 1"),
        (VideoPrompt(0, 1, ((500, 5, 1),)), "lies outside the 160x120 image"),
    ]:
        with pytest.raises(InputError, match=message):
            track_clip(segmenter, clip, vocabulary, prompts=[prompt], every=2)


def test_overlay_video_plays_in_chromium(tmp_path):
    """The MP4 the overlay writer makes is one a browser plays (H.264, fast start), odd sizes included."""
    from playwright.sync_api import sync_playwright
    from test_app import CHROMIUM, CHROMIUM_ARGS

    from maskadapter.output.video_export import Mp4Writer

    writer = Mp4Writer(tmp_path / "clip.mp4", 10.0, (H - 1, W - 1))
    for t in range(10):
        writer.write(drawn(t)[: H - 1, : W - 1])
    writer.close()
    (tmp_path / "page.html").write_text('<video id="v" src="clip.mp4" muted></video>')
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.goto((tmp_path / "page.html").as_uri())
        played = page.evaluate(
            """async () => {
                const v = document.getElementById("v");
                await v.play();
                await new Promise((done) => setTimeout(done, 500));
                return [v.videoWidth, v.videoHeight, v.currentTime > 0, v.error];
            }"""
        )
        browser.close()
    assert played == [W, H, True, None]  # odd sizes padded by one pixel for H.264's 4:2:0


@pytest.mark.parametrize("fail_at, message", [(0, "no frame could be read"), (3, "frames after 3 could not be read")])
def test_a_clip_cut_short_says_what_could_be_read(tmp_path, monkeypatch, fail_at, message):
    """A decoding error part way (a file cut short) is reported in words: how many frames
    could be read, never "after frame -1"."""
    import contextlib

    import av

    from maskadapter.engine import video_source

    gif = tmp_path / "cut.gif"
    pictures = [Image.fromarray(drawn(t)) for t in range(6)]
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=100, loop=0)
    clip = open_clip_file(gif)
    real_open = video_source._open

    @contextlib.contextmanager
    def cut_short(path):
        with real_open(path) as container:

            class Cut:
                streams = container.streams

                @staticmethod
                def decode(stream):
                    for i, frame in enumerate(container.decode(stream)):
                        if i == fail_at:
                            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                        yield frame

            yield Cut()

    monkeypatch.setattr(video_source, "_open", cut_short)
    read = []
    with pytest.raises(InputError) as err:
        for index, _ in clip.frames():
            read.append(index)
    assert read == list(range(fail_at))
    assert str(err.value) == f"cut.gif cannot be decoded: {message} (Invalid data found when processing input)"


@pytest.mark.parametrize("kind", ["b-frames", "variable-rate"])
def test_a_frame_is_sought_by_its_timestamp(tmp_path, monkeypatch, kind):
    """``Clip.frame(i)`` is the i-th frame ``frames`` decodes, found by a seek to the key
    frame before it (its timestamp read from the packets, so B-frames and a variable
    frame rate are followed): with a key frame every 4 frames, a request decodes a few
    frames, not i + 1."""
    from fractions import Fraction

    path = tmp_path / "keys.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv444p"
        stream.options = {"qp": "0", "g": "4", "keyint_min": "4", "sc_threshold": "0", "bf": "2"}
        stream.codec_context.time_base = Fraction(1, 1000)
        at = 0
        for t in range(30):
            frame = av.VideoFrame.from_ndarray(drawn(t), format="rgb24")
            frame.pts, frame.time_base = at, Fraction(1, 1000)
            at += 100 if kind == "b-frames" else (40 if t % 3 else 250)  # 10 fps, or uneven steps
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    clip = open_clip_file(path)
    every = dict(clip.frames())
    assert len(every) == 30
    decoded = []
    real_decode = av.container.InputContainer.decode

    def counting(self, *args, **kwargs):
        for frame in real_decode(self, *args, **kwargs):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    for index in (0, 1, 7, 13, 22, 29):
        decoded.clear()
        assert np.array_equal(clip.frame(index), every[index]), index
        assert 1 <= len(decoded) <= 8, (index, decoded)
    assert clip.frame(30) is None


def test_no_track_is_without_frames(segmenter, clips):
    """At a small working size SAM-2 gives no mask for many small detected masks on their
    own frame: those tracks are not kept (they were listed with no frame at all), and
    every track of the result has a mask on its first frame."""
    clip = open_clip_file(clips / "twelve.mp4")
    settings = AutoMaskSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    result = track_clip(
        segmenter, clip, segmenter.vocabulary("ball, box"), every=2, video_side=64, mode="per_mask",
        mask_settings=settings,
    )  # fmt: skip
    assert result.tracks
    assert all(track.masks and track.first_frame in track.masks for track in result.tracks)


def test_sam2_tracks_the_decoded_frames_not_shrunk_copies(segmenter, clips, small_sam2):
    """SAM-2's video predictor gets each frame as decoded (and resizes it to its input, as
    sam2 does with the frames it loads); detection and naming use the working size."""
    seen = []

    class Recording(Tracker):
        def begin(self, t, frame):
            seen.append(frame.shape[:2])
            super().begin(t, frame)

    clip = open_clip_file(clips / "twelve.mp4")
    result = track_clip(
        segmenter, clip, segmenter.vocabulary("ball"), prompts=[VideoPrompt(0, 1, ((25, 35, 1),))], every=4,
        video_side=64, make_tracker=on_small(small_sam2, Recording),
    )  # fmt: skip
    assert seen == [(H, W)] * 3 and result.frame.work_hw == (48, 64)


def _tiny_sam2_config(image_size: int):
    """The tiny SAM-2 config with another input size (the image predictor needs 1024; the
    video predictor and ``Tracker`` take any multiple of 64: 256 makes memory attention,
    over 64x64 positions per memory frame at 1024, 256 times cheaper)."""
    from omegaconf import OmegaConf

    from maskadapter.engine.weights import TINY_SAM2_CONFIG

    cfg = OmegaConf.load(TINY_SAM2_CONFIG)
    OmegaConf.resolve(cfg)
    cfg.model.image_size = image_size
    return cfg


def _sam2_video_predictor(sam_model):
    """sam2's own video predictor, built as ``build_sam2_video_predictor`` builds it
    (its default post-processing) from the tiny config, with ``sam_model``'s weights."""
    from hydra.utils import instantiate

    cfg = _tiny_sam2_config(sam_model.image_size)
    cfg.model._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    extra = dict(cfg.model.get("sam_mask_decoder_extra_args") or {})
    extra |= {"dynamic_multimask_via_stability": True, "dynamic_multimask_stability_delta": 0.05}
    cfg.model.sam_mask_decoder_extra_args = extra | {"dynamic_multimask_stability_thresh": 0.98}
    cfg.model.binarize_mask_from_pts_for_mem_enc, cfg.model.fill_hole_area = True, 8
    predictor = instantiate(cfg.model, _recursive_=True)
    predictor.load_state_dict(sam_model.state_dict(), strict=True)
    return predictor.eval()


@pytest.mark.slow  # four objects tracked twice through 40 frames: about 10 s on 2 CPU cores
def test_tracker_gives_sam2s_own_video_predictor_masks(small_sam2, tmp_path):
    """One click, two clicks, a box and a mask on frame 0 (four objects), tracked through
    40 frames (past SAM-2's memory window of 16 and its 7 memory frames): ``Tracker``
    gives exactly the masks of sam2's ``init_state`` + ``add_new_points_or_box`` /
    ``add_new_mask`` + ``propagate_in_video`` on the same random weights and input frames.
    (With the image model's decoder settings, two clicks and a box gave other masks on
    frame 0.) The tiny model here takes 256-pixel inputs: the same modules and code paths
    as at 1024, at a sixteenth of the positions."""
    model = small_sam2
    frames = [drawn(t) for t in range(40)]
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{t:05d}.jpg")
    clicks = {
        1: {"points": np.array([[25, 35]], np.float32), "labels": np.array([1])},
        2: {"points": np.array([[25, 35], [60, 60]], np.float32), "labels": np.array([1, 0])},
        3: {"box": np.array([110, 30, 140, 60], np.float32)},
    }
    given = np.zeros((H, W), bool)
    given[20:50, 10:40] = True  # object 4: a mask
    ours = Tracker(model, len(frames), (H, W))
    reference = _sam2_video_predictor(model)
    with torch.inference_mode():
        state = reference.init_state(str(tmp_path))  # loads the JPEGs; the same input tensors as ours instead:
        state["images"], state["cached_features"] = torch.stack([ours.transform(f) for f in frames]), {}
        for obj, args in clicks.items():
            reference.add_new_points_or_box(state, 0, obj, **args)
        reference.add_new_mask(state, 0, 4, torch.as_tensor(given))
        theirs = {t: (masks[:, 0] > 0).numpy() for t, _, masks in reference.propagate_in_video(state)}
        for t, frame in enumerate(frames):
            ours.begin(t, frame)
            ours.propagate()
            if t == 0:
                for obj, args in clicks.items():
                    ours.add_points(obj, args.get("points"), args.get("labels"), args.get("box"))
                ours.add_mask(4, given)
            masks = ours.end().numpy()
            assert ours.ids == [1, 2, 3, 4]
            assert all(m.any() for m in theirs[t]), t  # every object still has pixels to compare
            assert [int((a != b).sum()) for a, b in zip(masks, theirs[t], strict=True)] == [0, 0, 0, 0], t


def test_a_track_that_leaves_is_retired_and_comes_back_with_its_id(segmenter, small_sam2, tmp_path, monkeypatch):
    """The blue square leaves on frame 6 and comes back elsewhere on frame 12: its track
    is retired after 3 empty frames (no longer tracked on frames 9 to 11) and the square
    found again gets its id back; the red square is followed all along."""

    def frame(t: int) -> np.ndarray:
        pixels = np.full((H, W, 3), 200, np.uint8)
        pixels[20:50, 10 + 2 * t : 40 + 2 * t] = RED
        if t < 6 or t >= 12:
            x = 110 if t < 6 else 80
            pixels[70:100, x : x + SIDE] = BLUE
        return pixels

    path = tmp_path / "away.mp4"
    write_clip(path, 18, draw=frame)
    ColourSAM(monkeypatch)
    monkeypatch.setattr(segmenter, "segment_automatic", ColourDetections(segmenter))
    followed = {}

    class Recording(Tracker):
        def begin(self, t, pixels):
            followed[t] = self.ids
            super().begin(t, pixels)

    result = track_clip(segmenter, open_clip_file(path), segmenter.vocabulary("ball, box"), redetect_every=3,
                        make_tracker=on_small(small_sam2, Recording))  # fmt: skip
    red, blue = result.tracks
    assert (red.id, blue.id) == (1, 2) and sorted(red.masks) == list(range(18))
    assert sorted(blue.masks) == [*range(6), *range(12, 18)]
    assert [followed[t] for t in (8, 9, 11, 12, 13)] == [[1, 2], [1], [1], [1], [1, 2]]  # retired after frame 8


def test_track_clip_gives_the_trackers_own_masks(segmenter, clips, small_sam2):
    """The whole ``track_clip`` path (decoding, prompts scaled to the working frame,
    naming between frames) gives the masks of a ``Tracker`` driven by hand on the same
    decoded frames with the same click."""
    clip = open_clip_file(clips / "twelve.mp4")
    click = [VideoPrompt(0, 1, ((25, 35, 1),))]
    result = track_clip(
        segmenter, clip, segmenter.vocabulary("ball, box"), prompts=click, make_tracker=on_small(small_sam2)
    )
    (track,) = result.tracks
    assert len(track.masks) == clip.frame_count  # a mask on every frame, compared below
    assert result.frame.work_hw == (H, W)  # the clip's size: the click needs no scaling
    alone = Tracker(small_sam2, clip.frame_count, (H, W))
    with torch.inference_mode():
        for t, (index, pixels) in enumerate(clip.frames()):
            alone.begin(t, pixels)
            alone.propagate()
            if t == 0:
                alone.add_points(1, np.array([[25, 35]], np.float32), np.array([1]))
            assert np.array_equal(track.mask(index, (H, W)), alone.end()[0].numpy()), index


def test_the_video_predictors_decoder_settings_leave_the_image_model_alone():
    """The video predictor's mask decoder has the video build's settings and the image
    model's weights; the image model's decoder keeps its own settings, also when
    ``--compile`` wrapped it (the wrapper passes attributes on to the module inside)."""
    from maskadapter.engine.tracker import video_predictor
    from maskadapter.engine.weights import build_tiny_random

    sam = build_tiny_random("cpu").sam2
    plain = sam.sam_mask_decoder
    sam.sam_mask_decoder = torch.compile(plain)  # as compile_sam2 wraps it; nothing compiles until called
    predictor = video_predictor(sam)
    assert predictor.sam_mask_decoder.dynamic_multimask_via_stability is True
    assert plain.dynamic_multimask_via_stability is False and sam.sam_mask_decoder._orig_mod is plain
    assert predictor.sam_mask_decoder.transformer is plain.transformer  # the same weights
    assert predictor.image_encoder is sam.image_encoder


def twin_boxes(t: int) -> list[tuple[int, int, int, int] | None]:
    """XYXY of two red squares on frame t of 50: the first stays; the second enters from
    the right on frame 10, crosses the first (overlapping it on frames 22 to 28), is gone
    on frames 30 to 39 and comes back, elsewhere, on frame 40."""
    first = (20, 40, 20 + SIDE, 40 + SIDE)
    if 10 <= t < 30:
        x = 150 - 8 * (t - 10)
        second = (max(0, x), 50, min(W, x + SIDE), 50 + SIDE)
    else:
        second = (100, 50, 100 + SIDE, 50 + SIDE) if t >= 40 else None
    return [first, second]


class OracleSAM:
    """SAM-2 tracking perfectly, for a clip whose true objects are known: the real step
    runs, then an object's low-res mask logits become +10 on its own object's pixels on
    that frame (-10 elsewhere, all -10 where it is gone). An object is one of the true
    ones from its prompt: the one its given mask overlaps most, or the one clicked."""

    def __init__(self, monkeypatch, truth: Callable[[int], list[np.ndarray]]) -> None:
        self.truth = truth  # frame index -> (H, W) bool masks of the true objects
        self.which: dict[int, int] = {}  # id(the object's output dict) -> true object
        original = SAM2VideoPredictor._run_single_frame_inference

        def step(predictor, inference_state, output_dict, frame_idx, batch_size, *args, **kwargs):
            out, masks = original(predictor, inference_state, output_dict, frame_idx, batch_size, *args, **kwargs)
            side = predictor.image_size
            true = [self._resized(m, side) for m in truth(frame_idx)]  # SAM-2's input frame
            points, given = kwargs.get("point_inputs"), kwargs.get("mask_inputs")
            if given is not None:
                self.which[id(output_dict)] = int(np.argmax([(m & (given[0, 0] > 0.5)).sum() for m in true]))
            elif points is not None:
                x, y = points["point_coords"][0, 0].long().tolist()
                self.which[id(output_dict)] = next(k for k, m in enumerate(true) if m[y, x])
            own = true[self.which[id(output_dict)]][None, None].float()
            low = F.interpolate(own, size=(side // 4, side // 4), mode="nearest") > 0.5
            logits = torch.where(low, 10.0, -10.0).to(masks.dtype)
            out["pred_masks"] = logits.to(out["pred_masks"].device)
            return out, logits.to(masks.device)

        monkeypatch.setattr(SAM2VideoPredictor, "_run_single_frame_inference", step)

    @staticmethod
    def _resized(mask: np.ndarray, side: int) -> torch.Tensor:
        """(H, W) bool -> (side, side) bool, as SAM-2 resizes a frame to its square input."""
        return F.interpolate(torch.as_tensor(mask)[None, None].float(), size=(side, side), mode="nearest")[0, 0] > 0.5


class ShapeDetections:
    """``segment_automatic`` of a frame as SAM-2's "segment everything" would find the
    squares: one segment per connected region of red (two squares that touch are one)."""

    def __init__(self) -> None:
        self.found: list[int] = []  # segments per look

    def __call__(self, session, *args, **kwargs):
        red = (np.abs(session.image.astype(int) - RED).max(2) < 40).astype(np.uint8)
        count, labels = cv2.connectedComponents(red)
        segments = [type("Found", (), {"mask": labels == k})() for k in range(1, count)]
        self.found.append(len(segments))
        return type("Result", (), {"segments": segments})()


def test_two_same_coloured_shapes_are_two_objects_and_one_comes_back(segmenter, small_sam2, tmp_path, monkeypatch):
    """Two squares of one colour (the second entering on frame 10, crossing the first,
    gone on frames 30 to 39, back on 40), found automatically and tracked with SAM-2's
    masks made exact: two tracks with two ids, the second square's track retired while it
    is gone and given its id back when it returns, and no track holding both squares,
    also while they touch and are found as one region."""

    def truth(t: int) -> list[np.ndarray]:
        return [shape(box) for box in twin_boxes(t)]

    def frame(t: int) -> np.ndarray:
        pixels = np.full((H, W, 3), 200, np.uint8)
        pixels[np.logical_or.reduce(truth(t))] = RED
        return pixels

    path = tmp_path / "twins.mp4"
    write_clip(path, 50, draw=frame)
    OracleSAM(monkeypatch, truth)
    detections = ShapeDetections()
    monkeypatch.setattr(segmenter, "segment_automatic", detections)
    result = track_clip(
        segmenter, open_clip_file(path), segmenter.vocabulary("square, wall"), redetect_every=4,
        make_tracker=on_small(small_sam2),
    )  # fmt: skip
    assert detections.found[6:8] == [1, 1]  # the looks on frames 24 and 28: the touching squares as one
    first, second = result.tracks
    assert (first.id, second.id) == (1, 2)
    assert sorted(first.masks) == list(range(50))
    assert sorted(second.masks) == [*range(12, 30), *range(40, 50)]  # found on the look at frame 12
    for t in range(50):
        squares = [m for m in truth(t) if m.any()]
        for track in result.tracks:
            if t in track.masks:
                mask = track.mask(t, (H, W))
                assert sum(bool((mask & s).sum() >= 0.9 * s.sum()) for s in squares) == 1, (track.id, t)
