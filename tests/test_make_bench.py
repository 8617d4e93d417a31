"""`coincide make-bench`: determinism, the class prior, split disjointness, the mp4 streams, event
bounds, class-blind nuisances, the SNR of the mix, and the generic CSV mode.

Benchmarks here are a handful of 3 s clips of the bundled demo data, or of files made in the test.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import soundfile
from PIL import Image

from coincide.bench.benchmark import plan_benchmark
from coincide.bench.compose import run
from coincide.bench.params import BenchParams
from coincide.bench.plan import BackgroundPiece, ClipPlan, SoundEvent, plan_clip
from coincide.bench.presets import SourceArgs, esc50_backgrounds, resolve_inputs
from coincide.bench.prior import sample_classes, zipf_prior
from coincide.bench.render import Material, render_audio
from coincide.bench.sources import SoundBank, Source
from coincide.errors import UserError

DEMO = SourceArgs(preset="demo")
SMALL = BenchParams(clips=4, test_clips=2, seconds=3, seed=7, distractor_prob=0.5, textures=(4, 2))


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
    assert len(clips) == 6
    for clip in clips:
        first, second = decoded_audio(bench_dir / clip), decoded_audio(again / clip)
        assert np.array_equal(first, second)
        assert (bench_dir / clip).read_bytes() == (again / clip).read_bytes()


def test_another_seed_gives_another_benchmark(bench_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run(other, replace(SMALL, seed=8, clips=1, test_clips=0), DEMO)
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


def test_train_and_test_use_disjoint_sources() -> None:
    params = BenchParams(
        clips=30, test_clips=12, seconds=4, seed=1, distractor_prob=1.0, textures=(3, 2)
    )
    bench = plan_benchmark(params, resolve_inputs(DEMO))
    material = bench.material
    used: dict[str, set[str]] = {"train": set(), "test": set()}
    for plan in bench.plans:
        refs = [material.sounds.sources[e.source] for e in plan.sounds]
        refs += [material.images[h.source] for h in plan.images]
        refs += [material.backgrounds.sources[p.source] for p in plan.background]
        assert {source.split for source in refs} == {plan.split}
        used[plan.split] |= {source.group for source in refs}
        # Exactly one distractor per clip (probability 1), and the pictures still tile the clip.
        kinds = [e.kind for e in plan.sounds] + [h.kind for h in plan.images]
        assert kinds.count("distractor") == 1
        spans = [(h.onset, h.offset) for h in plan.images]
        assert spans[0][0] == 0 and spans[-1][1] == params.seconds
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert used["train"] and used["test"]
    assert not used["train"] & used["test"]
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
    assert sum(s == {"test"} for s in splits.values()) == 2  # a quarter of 8 recordings


def test_mp4_holds_h264_video_and_aac_audio(bench_dir: Path) -> None:
    with av.open(str(bench_dir / "test" / "clip_00001.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert (video.codec_context.width, video.codec_context.height) == (128, 128)
        assert audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == 16000
        assert audio.codec_context.layout.name == "mono"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == SMALL.seconds * SMALL.fps
    samples = decoded_audio(bench_dir / "test" / "clip_00001.mp4")
    assert abs(len(samples) - SMALL.seconds * 16000) < 2048  # AAC pads its last frame
    assert np.sqrt(np.mean(samples**2)) > 10 ** (SMALL.level_db[0] / 20) / 2


def test_labels_and_events_describe_the_clips(bench_dir: Path) -> None:
    labels = read_rows(bench_dir / "labels.csv")
    assert [row["path"] for row in labels] == [f"train/clip_{i:05d}.mp4" for i in range(4)] + [
        f"test/clip_{i:05d}.mp4" for i in range(2)
    ]
    assert all((bench_dir / row["path"]).is_file() for row in labels)
    per_split = read_rows(bench_dir / "labels_train.csv") + read_rows(bench_dir / "labels_test.csv")
    assert per_split == labels
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


def test_nuisances_do_not_depend_on_the_class() -> None:
    params = BenchParams(clips=4, test_clips=0, seconds=6, seed=5, textures=(3, 1))
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
    assert len({tuple(e.label for e in p.sounds if e.kind == "target") for p in plans}) == 3


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
        clips=4, test_clips=2, seconds=3, seed=2, zipf=0.0, fps=2, size=96, textures=(2, 2)
    )
    assert run(out, params, sources) == 0
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
    assert "| train | 9 | 26 | 2 | 2 |" in readme and "| test | 3 | 10 | 1 | 1 |" in readme


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
