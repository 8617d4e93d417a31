"""`coincide make-bench`: determinism, the class prior, three disjoint splits, the mp4 streams,
event bounds, class-blind nuisances, scenes and their leak check, visibility synced to sound, the
SNR of the mix, and the generic CSV mode.

Benchmarks here are a handful of 3 s clips of the bundled demo data, or of files made in the test;
the larger designs (hundreds of clips) are planned only, never rendered.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import astuple, replace
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import soundfile
from PIL import Image

from coincide.benchdata.benchmark import Benchmark, plan_benchmark
from coincide.benchdata.compose import run
from coincide.benchdata.nuisances import CLIP_COLUMNS, class_leak, clip_rows
from coincide.benchdata.params import BenchParams
from coincide.benchdata.plan import (
    BackgroundPiece,
    ClipPlan,
    SoundEvent,
    plan_clip,
    silent_seconds,
)
from coincide.benchdata.presets import (
    Inputs,
    SourceArgs,
    demo_data_dir,
    esc50_backgrounds,
    resolve_inputs,
    speaker_splits,
)
from coincide.benchdata.prior import sample_classes, zipf_prior
from coincide.benchdata.render import Material, render_audio, render_frames
from coincide.benchdata.sources import (
    SoundBank,
    Source,
    read_background_csv,
    read_labeled_csv,
    split_of,
)
from coincide.errors import UserError

DEMO = SourceArgs(preset="demo")
SMALL = BenchParams(
    clips=4,
    val_clips=2,
    test_clips=2,
    seconds=3,
    seed=7,
    distractor_prob=0.5,
    textures=(4, 2, 2),
)
SPLITS = ("train", "val", "test")


def decoded_audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "demo"
    assert run(out, SMALL, DEMO) == 0
    return out


def test_same_seed_gives_the_same_benchmark(bench_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    run(again, SMALL, DEMO)
    for name in ("labels.csv", "events.csv"):
        assert (again / name).read_bytes() == (bench_dir / name).read_bytes()
    clips = sorted(p.relative_to(bench_dir) for p in bench_dir.glob("*/*.mp4"))
    assert len(clips) == 8
    for clip in clips:
        first, second = decoded_audio(bench_dir / clip), decoded_audio(again / clip)
        assert np.array_equal(first, second)
        assert (bench_dir / clip).read_bytes() == (again / clip).read_bytes()


def test_another_seed_gives_another_benchmark(bench_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run(other, replace(SMALL, seed=8, clips=1, val_clips=0, test_clips=0), DEMO)
    clip = "train/clip_00000.mp4"
    events = [read_rows(folder / "events.csv") for folder in (other, bench_dir)]
    assert [r for r in events[0] if r["clip"] == clip] != [
        r for r in events[1] if r["clip"] == clip
    ]
    assert not np.array_equal(decoded_audio(other / clip), decoded_audio(bench_dir / clip))


def test_zipf_prior_values_and_ranking() -> None:
    prior, rank = zipf_prior(4, 1.0)
    assert rank.tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(prior, np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))
    prior, rank = zipf_prior(5, 2.0, np.random.default_rng(0))
    assert sorted(rank.tolist()) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(prior * rank.astype(float) ** 2, prior[rank == 1][0])
    uniform, _ = zipf_prior(6, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(uniform, np.full(6, 1 / 6))


@pytest.mark.parametrize("exponent", [0.0, 1.0, 1.5])
def test_sampled_class_frequencies_follow_the_prior(exponent: float) -> None:
    prior, rank = zipf_prior(10, exponent, np.random.default_rng(3))
    drawn = sample_classes(prior, 50_000, np.random.default_rng(4))
    frequencies = np.bincount(drawn, minlength=10) / len(drawn)
    np.testing.assert_allclose(frequencies, prior, atol=0.01)
    # The realised frequencies fall with rank as 1 / rank^exponent (log-log slope = -exponent).
    slope = np.polyfit(np.log(rank), np.log(frequencies), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.05)


@pytest.mark.parametrize("scene", ["shared", "independent"])
def test_train_val_and_test_use_disjoint_sources(scene: str) -> None:
    params = BenchParams(
        clips=30,
        val_clips=12,
        test_clips=12,
        seconds=4,
        seed=1,
        distractor_prob=1.0,
        textures=(3, 2, 2),
        scene=scene,
    )
    bench = plan_benchmark(params, resolve_inputs(DEMO))
    material = bench.material
    used: dict[str, set[str]] = {split: set() for split in SPLITS}
    speakers: dict[str, set[str]] = {split: set() for split in SPLITS}
    textures: dict[str, set[int]] = {split: set() for split in SPLITS}
    for plan in bench.plans:
        sounds = [material.sounds.sources[e.source] for e in plan.sounds]
        refs = sounds + [material.images[h.source] for h in plan.images]
        refs += [material.backgrounds.sources[p.source] for p in plan.background]
        assert {source.split for source in refs} == {plan.split}
        used[plan.split] |= {source.group for source in refs}
        # The demo's sound groups are speaker_take: no voice is heard in two splits.
        speakers[plan.split] |= {source.group.rsplit("_", 1)[0] for source in sounds}
        textures[plan.split].add(plan.texture)
        # Exactly one distractor per clip (probability 1), and the pictures still tile the clip.
        kinds = [e.kind for e in plan.sounds] + [h.kind for h in plan.images]
        assert kinds.count("distractor") == 1
        spans = [(h.onset, h.offset) for h in plan.images]
        assert spans[0][0] == 0 and spans[-1][1] == params.seconds
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert used[a] and used[b]
        assert not used[a] & used[b]
        assert not speakers[a] & speakers[b]
        assert not textures[a] & textures[b]
    assert len(speakers["train"]) == 4 and len(speakers["val"]) == len(speakers["test"]) == 1
    modalities = {
        "audio" if any(e.kind == "distractor" for e in plan.sounds) else "image"
        for plan in bench.plans
    }
    assert modalities == {"audio", "image"}


def test_esc50_backgrounds_split_by_source_recording(tmp_path: Path) -> None:
    rows = [
        (f"audio/4-{src}-{take}-10.flac", "rain", src, take)
        for src in ("100", "200", "300", "400", "500", "600", "700", "800")
        for take in "AB"
    ] + [("audio/4-900-A-0.flac", "dog", "900", "A")]
    pd.DataFrame(rows, columns=["filename", "label", "src_file", "take"]).to_csv(
        tmp_path / "metadata.csv", index=False
    )
    sources = esc50_backgrounds(tmp_path)
    assert len(sources) == 16  # the dog is no ambient background
    splits: dict[str, set[str]] = {}
    for source in sources:
        splits.setdefault(source.group, set()).add(source.split)
    assert all(len(s) == 1 for s in splits.values())
    # A quarter of 8 recordings each for test and val, the rest train.
    assert sum(s == {"test"} for s in splits.values()) == 2
    assert sum(s == {"val"} for s in splits.values()) == 2


def test_speakers_and_hashed_groups_split_three_ways() -> None:
    fsdd = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    split = speaker_splits(set(fsdd))
    assert sorted(split.values()) == ["test", "train", "train", "train", "train", "val"]
    assert speaker_splits(set(reversed(fsdd))) == split  # a hash, not the order
    with pytest.raises(UserError, match="at least 3 speakers"):
        speaker_splits({"a", "b"})
    # Hashed groups: test keeps the buckets of the two-split rule; val takes the next 15%.
    shares = pd.Series([split_of(f"file_{k}.wav") for k in range(4000)]).value_counts(
        normalize=True
    )
    assert shares["test"] == pytest.approx(0.25, abs=0.03)
    assert shares["val"] == pytest.approx(0.15, abs=0.03)
    assert split_of("file_0.wav") == split_of("file_0.wav")


def test_mp4_holds_h264_video_and_aac_audio(bench_dir: Path) -> None:
    with av.open(str(bench_dir / "val" / "clip_00001.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert (video.codec_context.width, video.codec_context.height) == (128, 128)
        assert audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == 16000
        assert audio.codec_context.layout.name == "mono"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == SMALL.seconds * SMALL.fps
    samples = decoded_audio(bench_dir / "val" / "clip_00001.mp4")
    assert abs(len(samples) - SMALL.seconds * 16000) < 2048  # AAC pads its last frame
    assert np.sqrt(np.mean(samples**2)) > 10 ** (SMALL.level_db[0] / 20) / 2


def test_labels_and_events_describe_the_clips(bench_dir: Path) -> None:
    labels = read_rows(bench_dir / "labels.csv")
    assert [row["path"] for row in labels] == [f"train/clip_{i:05d}.mp4" for i in range(4)] + [
        f"{split}/clip_{i:05d}.mp4" for split in ("val", "test") for i in range(2)
    ]
    assert all((bench_dir / row["path"]).is_file() for row in labels)
    per_split = [row for split in SPLITS for row in read_rows(bench_dir / f"labels_{split}.csv")]
    assert per_split == labels
    clips = read_rows(bench_dir / "clips.csv")
    assert list(clips[0]) == list(CLIP_COLUMNS)
    assert [(r["path"], r["label"]) for r in clips] == [(r["path"], r["label"]) for r in labels]
    assert all(0 <= int(r["scene"]) < SMALL.scenes for r in clips)
    label_of = {row["path"]: row["label"] for row in labels}
    events = pd.DataFrame(read_rows(bench_dir / "events.csv"))
    events[["onset", "offset"]] = events[["onset", "offset"]].astype(float)
    assert set(events["clip"]) == set(label_of)
    assert ((events["onset"] >= 0) & (events["onset"] < events["offset"])).all()
    assert (events["offset"] <= SMALL.seconds).all()
    assert set(events["kind"]) <= {"target", "distractor"}
    assert set(events["modality"]) == {"audio", "image"}
    for clip, rows in events.groupby("clip"):
        targets = rows[rows["kind"] == "target"]
        assert (targets["class"] == label_of[clip]).all()
        assert not (rows.loc[rows["kind"] == "distractor", "class"] == label_of[clip]).any()
        # Pictures cover the clip end to end without overlap; sound instances never overlap.
        images = rows[rows["modality"] == "image"].sort_values("onset")
        assert images["onset"].iloc[0] == 0 and images["offset"].iloc[-1] == SMALL.seconds
        assert np.allclose(images["onset"].to_numpy()[1:], images["offset"].to_numpy()[:-1])
        sounds = rows[rows["modality"] == "audio"].sort_values("onset")
        assert (sounds["onset"].to_numpy()[1:] >= sounds["offset"].to_numpy()[:-1]).all()
        assert rows["kind"].eq("distractor").sum() <= 1


@pytest.mark.parametrize("scene", ["shared", "independent"])
def test_nuisances_do_not_depend_on_the_class(scene: str) -> None:
    params = BenchParams(
        clips=4, val_clips=0, test_clips=0, seconds=6, seed=5, textures=(3, 1, 1), scene=scene
    )
    bench = plan_benchmark(params, resolve_inputs(DEMO))
    pool, sounds = bench.pools["train"], bench.material.sounds
    plans = [
        plan_clip("train", 2, c, c, params, pool, sounds, bench.material.backgrounds)
        for c in ("0", "3", "9")
    ]
    for plan in plans[1:]:
        assert plan.level_db == plans[0].level_db
        assert plan.background == plans[0].background
        assert (plan.texture, plan.pan, plan.colour) == (
            plans[0].texture,
            plans[0].pan,
            plans[0].colour,
        )
        assert (plan.scene, plan.tint, plan.brightness) == (
            plans[0].scene,
            plans[0].tint,
            plans[0].brightness,
        )
    assert len({tuple(e.label for e in p.sounds if e.kind == "target") for p in plans}) == 3
    assert (plans[0].scene >= 0) == (scene == "shared")


def plan_digest(bench: Benchmark) -> str:
    """A hash of every choice in the plans that the two-split, scene-less design made."""
    rows = [
        (
            p.path,
            p.label,
            p.image_label,
            p.level_db,
            p.texture,
            p.pan,
            p.colour,
            [astuple(b) for b in p.background],
            [(e.source, e.onset, e.offset, e.snr_db, e.label, e.kind) for e in p.sounds],
            [
                (h.source, h.onset, h.offset, h.label, h.kind, h.side, h.x, h.y, h.vx, h.vy)
                for h in p.images
            ],
        )
        for p in bench.plans
    ]
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def test_independent_scenes_draw_what_the_first_design_drew() -> None:
    # The bundled CSVs as written (two splits, by take), no validation clips: the pools of the
    # design before scenes and the val split. The digests were taken from that design's code.
    folder = demo_data_dir()
    inputs = Inputs(
        sounds=read_labeled_csv(folder / "sounds.csv", "sound"),
        images=read_labeled_csv(folder / "images.csv", "image"),
        backgrounds=read_background_csv(folder / "backgrounds.csv", "background"),
    )
    params = BenchParams(
        clips=6,
        val_clips=0,
        test_clips=3,
        seconds=5,
        seed=11,
        distractor_prob=0.5,
        textures=(4, 1, 2),
        scene="independent",
    )
    bench = plan_benchmark(params, inputs)
    assert plan_digest(bench) == "e0059c7912bf9d692c1989205c40bbd133e5c529934879cbaef9e0859f85f0f1"
    textures = np.concatenate([t.ravel() for t in bench.material.textures[:6]]).tobytes()
    assert hashlib.sha256(textures).hexdigest() == (
        "7b503b4daea8a71f56a9c48bb32a76ea40edb73606b19ca3eddc9ca771ee7023"
    )
    assert all(p.scene == -1 and p.tint == (1.0, 1.0, 1.0) for p in bench.plans)
    # And the same plans in shared mode differ: the scene narrows the pools.
    shared = plan_benchmark(replace(params, scene="shared"), inputs)
    assert plan_digest(shared) != plan_digest(bench)


def test_a_scene_ties_ambience_to_background_family_and_light() -> None:
    # Three scenes over the demo's three train recordings: one recording per scene.
    params = BenchParams(clips=90, val_clips=0, test_clips=0, seconds=3, seed=3, zipf=0.0, scenes=3)
    bench = plan_benchmark(params, resolve_inputs(DEMO))
    scenes = bench.pools["train"].scenes
    assert len(scenes) == 3
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(scenes[a].backgrounds) & set(scenes[b].backgrounds)
            assert not set(scenes[a].textures) & set(scenes[b].textures)
            assert scenes[a].tint != scenes[b].tint
            assert scenes[a].brightness != scenes[b].brightness
    assert sum(len(s.textures) for s in scenes) == 48
    for scene in scenes:
        assert np.mean(scene.tint) == pytest.approx(1.0)
    classes_in_scene: dict[int, set[str]] = {s: set() for s in range(3)}
    for plan in bench.plans:
        scene = scenes[plan.scene]
        assert {piece.source for piece in plan.background} <= set(scene.backgrounds)
        assert plan.texture in scene.textures
        assert (plan.tint, plan.brightness) == (scene.tint, scene.brightness)
        classes_in_scene[plan.scene].add(plan.label)
    # Every scene hosts clips of many classes (90 clips, uniform prior).
    assert all(len(classes) >= 6 for classes in classes_in_scene.values())
    # The light reaches the frames: a scene's picture is its texture times its light.
    plan = bench.plans[0]
    dark = replace(plan, images=(), brightness=0.5, tint=(1.0, 1.0, 1.0))
    plain = replace(plan, images=(), brightness=1.0, tint=(1.0, 1.0, 1.0))
    first_dark = next(render_frames(dark, bench.material, 1, params.size)).astype(float)
    first_plain = next(render_frames(plain, bench.material, 1, params.size)).astype(float)
    np.testing.assert_allclose(first_dark, np.round(first_plain * 0.5), atol=1)


def leak_rows(bench: Benchmark, plans: list[ClipPlan]) -> pd.DataFrame:
    return pd.DataFrame(clip_rows(plans, bench.material))


def test_scene_variables_carry_no_class_information() -> None:
    params = BenchParams(clips=600, val_clips=0, test_clips=0, seconds=2, seed=4)
    bench = plan_benchmark(params, resolve_inputs(DEMO))
    honest = class_leak(leak_rows(bench, bench.plans))
    assert honest is not None and honest["clips"] == 600
    # At chance: no more correct guesses than the majority class gets, within a binomial bound.
    assert honest["p_value"] > 0.01
    assert honest["accuracy"] <= honest["chance"] + 0.04

    # Positive control: one clip in three is filmed in the scene of its class (a test-only
    # tweak of its pools). The same check must see it.
    pool, material = bench.pools["train"], bench.material
    classes = bench.classes
    leaky = []
    for index, plan in enumerate(bench.plans):
        if index % 3 == 0:
            scene = pool.scenes[classes.index(plan.label) % len(pool.scenes)]
            tied = replace(pool, scenes=(scene,))
            plan = plan_clip(
                "train",
                index,
                plan.label,
                plan.image_label,
                params,
                tied,
                material.sounds,
                material.backgrounds,
            )
        leaky.append(plan)
    leak = class_leak(leak_rows(bench, leaky))
    assert leak is not None
    assert leak["p_value"] < 0.01
    assert leak["accuracy"] > honest["accuracy"] + 0.05


def test_sync_visibility_shows_the_image_only_while_it_sounds() -> None:
    params = BenchParams(
        clips=40,
        val_clips=0,
        test_clips=0,
        seconds=6,
        seed=9,
        density=0.5,
        distractor_prob=0.5,
        sync_visibility=True,
    )
    bench = plan_benchmark(params, resolve_inputs(DEMO))
    free = replace(params, sync_visibility=False)
    silent_total = 0
    for index, plan in enumerate(bench.plans):
        silent = silent_seconds(plan.sounds, params.seconds)
        silent_total += len(silent)
        targets = [h for h in plan.images if h.kind == "target"]
        for second in range(params.seconds):
            shown = any(h.onset < second + 1 and h.offset > second for h in targets)
            distracted = any(h.kind == "distractor" and h.onset == second for h in plan.images)
            assert shown == (second not in silent and not distracted), (plan.path, second)
        # Everything else is drawn as without syncing.
        unsynced = plan_clip(
            "train",
            index,
            plan.label,
            plan.image_label,
            free,
            bench.pools["train"],
            bench.material.sounds,
            bench.material.backgrounds,
        )
        assert (plan.sounds, plan.background, plan.texture) == (
            unsynced.sounds,
            unsynced.background,
            unsynced.texture,
        )
    assert silent_total > 0
    # In pixels: a silent second's frames are the background alone.
    plan = next(p for p in bench.plans if silent_seconds(p.sounds, params.seconds))
    second = silent_seconds(plan.sounds, params.seconds)[0]
    frames = list(render_frames(plan, bench.material, params.fps, params.size))
    empty = list(render_frames(replace(plan, images=()), bench.material, params.fps, params.size))
    for i in range(second * params.fps, (second + 1) * params.fps):
        if not any(h.onset <= i / params.fps < h.offset for h in plan.images):
            assert np.array_equal(frames[i], empty[i])
    shown = [i for i in range(len(frames)) if not np.array_equal(frames[i], empty[i])]
    assert shown  # the image does appear while the class sounds


def test_instances_are_mixed_at_their_snr(tmp_path: Path) -> None:
    rate = 16000
    rng = np.random.default_rng(0)
    soundfile.write(tmp_path / "noise.wav", 0.1 * rng.standard_normal(3 * rate), rate)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate)
    soundfile.write(tmp_path / "tone.wav", tone, rate, subtype="FLOAT")
    sounds = SoundBank([Source("a", "train", "tone", "tone", tmp_path / "tone.wav")], rate)
    background = SoundBank([Source("", "train", "noise", "noise", tmp_path / "noise.wav")], rate)
    material = Material(sounds, background, [], [np.zeros((192, 192, 3), np.uint8)])
    piece = BackgroundPiece(0, 0, 0, 2 * rate, 0, 0)
    event = SoundEvent(0, 0.5, 1.0, 6.0, "a", "target")
    plan = ClipPlan(
        path="train/clip_00000.mp4",
        split="train",
        label="a",
        image_label="a",
        seconds=2,
        level_db=-30.0,
        texture=0,
        pan=(0, 0, 0, 0),
        colour=(255, 255, 255),
        background=(piece,),
        sounds=(event,),
        images=(),
    )
    mixed = render_audio(plan, material, rate).astype(np.float64)
    alone = render_audio(ClipPlan(**{**plan.__dict__, "sounds": ()}), material, rate).astype(
        np.float64
    )
    assert 20 * np.log10(np.sqrt(np.mean(alone**2))) == pytest.approx(-30.0, abs=1e-3)
    instance = (mixed - alone)[rate // 2 : rate]
    snr = 20 * np.log10(np.sqrt(np.mean(instance**2)) / np.sqrt(np.mean(alone**2)))
    # The 5 ms anti-click ramps take a little energy off the ends of the instance.
    assert snr == pytest.approx(6.0, abs=0.1)
    assert np.all(mixed[: rate // 2] == alone[: rate // 2])


def make_generic_sources(folder: Path) -> dict[str, Path]:
    """Three sound classes (tones) shown as three image classes (bars), plus noise backgrounds."""
    rate, rng = 8000, np.random.default_rng(0)
    for sub in ("sounds", "images"):
        (folder / sub).mkdir(parents=True)
    sound_rows, image_rows, bg_rows = [], [], []
    for k, label in enumerate(("low", "mid", "high")):
        for take in range(4):
            name = f"sounds/{label}_{take}.wav"
            n = int(rate * (0.3 + 0.1 * take))
            tone = 0.5 * np.sin(2 * np.pi * (300 + 400 * k) * np.arange(n) / rate)
            soundfile.write(folder / name, tone, rate)
            sound_rows.append([name, label, "test" if take == 0 else "train"])
        for take in range(12):
            name = f"images/{'abc'[k]}_{take}.png"
            pixels = np.zeros((20, 20), np.uint8)
            pixels[:, 4 * k : 4 * k + 6] = 255
            mode_image = Image.fromarray(pixels)
            (mode_image if take % 2 else mode_image.convert("RGB")).save(folder / name)
            image_rows.append([name, "abc"[k]])
    picture_rows = []
    for take, split in enumerate(("train", "train", "test")):
        name = f"bg_{take}.wav"
        soundfile.write(folder / name, 0.05 * rng.standard_normal(rate * 2), rate)
        bg_rows.append([name, split])
        picture = f"picture_{take}.jpg"
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / picture)
        picture_rows.append([picture, split])
    tables = {
        "sounds": (["path", "label", "split"], sound_rows),
        "images": (["path", "label"], image_rows),
        "backgrounds": (["path", "split"], bg_rows),
        "image_backgrounds": (["path", "split"], picture_rows),
        "pairing": (["sound_label", "image_label"], [["low", "a"], ["mid", "b"], ["high", "c"]]),
    }
    paths = {}
    for name, (header, rows) in tables.items():
        paths[name] = folder / f"{name}.csv"
        with open(paths[name], "w", newline="") as handle:
            csv.writer(handle).writerows([header, *rows])
    return paths


def test_generic_csv_mode(tmp_path: Path) -> None:
    csvs = make_generic_sources(tmp_path / "src")
    out = tmp_path / "bench"
    sources = SourceArgs(
        sounds=csvs["sounds"],
        images=csvs["images"],
        backgrounds=csvs["backgrounds"],
        image_backgrounds=csvs["image_backgrounds"],
        pairing=csvs["pairing"],
    )
    params = BenchParams(
        clips=4,
        val_clips=0,
        test_clips=2,
        seconds=3,
        seed=2,
        zipf=0.0,
        fps=2,
        size=96,
        textures=(2, 2, 2),
    )
    assert run(out, params, sources) == 0
    assert not (out / "val").exists()
    labels = read_rows(out / "labels.csv")
    assert len(labels) == 6 and {row["label"] for row in labels} <= {"low", "mid", "high"}
    pairing = {"low": "a", "mid": "b", "high": "c"}
    label_of = {row["path"]: row["label"] for row in labels}
    for row in read_rows(out / "events.csv"):
        if row["modality"] == "image" and row["kind"] == "target":
            assert row["class"] == pairing[label_of[row["clip"]]]
        if row["modality"] == "audio":
            split = "test" if row["source"].endswith("_0.wav") else "train"
            assert row["clip"].startswith(split)
    with av.open(str(out / "test" / "clip_00000.mp4")) as container:
        assert container.streams.video[0].codec_context.width == 96
        assert sum(1 for _ in container.decode(video=0)) == 6
    readme = (out / "README.md").read_text()
    assert "sounds listed in" in readme and "picture backgrounds listed in" in readme
    # Pool sizes: sounds by their split column, images by a stable hash of their path.
    train_images = sum(split_of(row["path"]) == "train" for row in read_rows(csvs["images"]))
    assert "| train | 9 (" in readme and f"| {train_images} (" in readme
    assert "| 2 | 2 | 8 |" in readme and "| 1 | 1 | 8 |" in readme
    # The sounds CSV splits in two only: validation clips need val rows, and the error says so.
    with pytest.raises(UserError, match="no val sounds.*--val-clips 0"):
        run(tmp_path / "with_val", replace(params, val_clips=1), sources)


def test_user_errors(tmp_path: Path, bench_dir: Path) -> None:
    with pytest.raises(UserError, match="--force"):
        run(bench_dir, SMALL, DEMO)
    with pytest.raises(UserError, match="--clips is required"):
        run(tmp_path / "a", BenchParams(), SourceArgs(sounds=tmp_path / "s.csv"))
    with pytest.raises(UserError, match="--density"):
        run(tmp_path / "b", BenchParams(clips=2, density=0.0), DEMO)
    (tmp_path / "bad.csv").write_text("file,label\nx.wav,1\n")
    with pytest.raises(UserError, match="lacks the column"):
        run(
            tmp_path / "c",
            SMALL,
            SourceArgs(sounds=tmp_path / "bad.csv", images=tmp_path / "bad.csv"),
        )
