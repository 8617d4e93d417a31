"""Training configuration: presets, overlays, --set overrides, validation, the resolved file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from coincide.config.settings import (
    STAGE_RECIPES,
    config_to_yaml,
    load_config,
    preset_names,
    save_config,
)
from coincide.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PACKAGED = REPO / "src" / "coincide" / "config" / "presets"


def test_paper_preset_holds_the_papers_numbers():
    cfg = load_config(["paper"])
    assert cfg.model.audio.arch == cfg.model.image.arch == "resnet50"
    assert cfg.model.embed_dim == 128
    assert cfg.model.coincidence_hidden == 512
    assert cfg.data.delta_t == 10.0
    assert cfg.data.batch_size == 512
    assert (cfg.clustering.K, cfg.clustering.gamma, cfg.clustering.scale) == (1_000_000, 1.1, 60.0)
    assert cfg.optim.compile == "auto"  # compiled on CUDA, eager on CPU
    assert cfg.curriculum.alpha == cfg.curriculum.beta == 0.1
    assert cfg.curriculum.negatives == "all"
    assert [s.name for s in cfg.curriculum.stages] == ["av", "coin", "joint"]
    av, coin, joint = (s.losses for s in cfg.curriculum.stages)
    assert av == {"av": 1.0}
    assert coin == pytest.approx({"av": 0.9, "aa": 0.1})
    # L_joint = (1 - beta) ((1 - alpha) L_AV + alpha L_AA) + beta L_clust
    assert joint == pytest.approx({"av": 0.81, "aa": 0.09, "clust": 0.1})
    assert [s.name for s in cfg.curriculum.audio_only_stages] == ["aa", "aa_clust"]
    assert cfg.curriculum.audio_only_stages[1].losses == pytest.approx({"aa": 0.9, "clust": 0.1})


def test_small_preset_is_cpu_sized_and_keeps_the_method():
    cfg = load_config(["small"])
    assert cfg.model.audio.arch == cfg.model.image.arch == "small"
    assert cfg.model.embed_dim == 128
    assert 32 <= cfg.data.batch_size <= 64 and 32 <= cfg.clustering.K <= 64
    assert sum(s.max_steps for s in cfg.curriculum.stages) <= 600
    assert [s.name for s in cfg.curriculum.stages] == ["av", "coin", "joint"]


def test_stage_defaults_come_from_the_curriculum_and_can_be_overridden_per_stage():
    cfg = load_config(
        ["small"],
        [
            "curriculum.max_steps=77",
            "curriculum.plateau.patience=9",
            "curriculum.stages.1.max_steps=5",
            "curriculum.stages.2.plateau.eval_every=3",
        ],
    )
    av, coin, joint = cfg.curriculum.stages
    assert (av.max_steps, coin.max_steps, joint.max_steps) == (77, 5, 77)
    assert av.plateau.patience == coin.plateau.patience == joint.plateau.patience == 9
    assert joint.plateau.eval_every == 3
    assert av.plateau.eval_every == cfg.curriculum.plateau.eval_every != 3


def test_set_overrides_parse_values_with_their_types():
    cfg = load_config(
        ["small"],
        [
            "optim.lr=3e-4",  # YAML 1.1 reads this as a string; the float field takes it
            "data.batch_size=16",
            "log.progress=false",
            "data.weighting=media",
            "curriculum.alpha=0.5",
            "curriculum.stages=[av, {name: mine, losses: {aa: 2.0}}]",
            "model.audio.arch=tiny",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 16 and isinstance(cfg.data.batch_size, int)
    assert cfg.log.progress is False
    assert cfg.data.weighting == "media"
    assert [s.name for s in cfg.curriculum.stages] == ["av", "mine"]
    assert cfg.curriculum.stages[1].losses == {"aa": 2.0}
    assert cfg.model.audio.arch == "tiny"
    # alpha reaches the recipes: coin = 0.5 L_AV + 0.5 L_AA
    assert load_config(["small"], ["curriculum.alpha=0.5"]).curriculum.stages[1].losses == {
        "av": 0.5,
        "aa": 0.5,
    }


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("colour=blue", "colour"),
        ("model.audio.depth=3", "model.audio.depth"),
        ("curriculum.stages.0.patience=3", "curriculum.stages.0.patience"),
    ],
)
def test_unknown_keys_are_user_errors_naming_the_key(override, named):
    with pytest.raises(UserError, match=f"'{named}' is unknown"):
        load_config(["small"], [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=many", "data.batch_size"),
        ("data.batch_size=2.5", "data.batch_size"),
        ("log.progress=1", "log.progress"),
        ("data.weighting=clips", "data.weighting"),
        ("curriculum.alpha=1.5", "curriculum.alpha"),
        ("curriculum.stages=[warp]", "stage 'warp'"),
        ("model.audio.arch=transformer", "transformer"),
        ("model.audio.embed_dim=64", "embed_dim"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=nan", "optim.lr' is 'nan'; use a finite number"),
        ("optim.weight_decay=.inf", "optim.weight_decay' is inf; use a finite number"),
        ("optim.compile=maybe", "optim.compile"),
        ("optim.compile=1", "optim.compile"),
        ("curriculum.stages.5.max_steps=1", "curriculum.stages.5"),
        ("noequals", "key.sub=value"),
    ],
)
def test_bad_values_are_user_errors_naming_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config(["small"], [override])


def test_overlay_files_merge_over_a_preset_and_partial_files_alone_are_incomplete(tmp_path):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("data: {delta_t: 3.0}\noptim: {lr: 0.01}\n", encoding="utf-8")
    cfg = load_config(["small", str(overlay)])
    assert cfg.data.delta_t == 3.0 and cfg.optim.lr == 0.01
    assert cfg.data.batch_size == load_config(["small"]).data.batch_size
    with pytest.raises(UserError, match="missing"):
        load_config([str(overlay)])
    with pytest.raises(UserError, match="neither a preset"):
        load_config(["no-such-preset"])
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n", encoding="utf-8")
    with pytest.raises(UserError, match="cannot parse"):
        load_config(["small", str(tmp_path / "broken.yaml")])


def test_laptop_preset_is_small_with_stages_long_enough_to_learn():
    laptop, small = load_config(["laptop"]), load_config(["small"])
    # The regularisers against memorizing a small store and the levers against learning only the
    # scene (a cosine coincidence head, hard negatives) are the only other differences.
    assert laptop.model == dataclasses.replace(
        small.model, head_dropout=laptop.model.head_dropout, coincidence_head="cosine"
    )
    assert laptop.curriculum.hard_negatives == 1.0 and small.curriculum.hard_negatives == 0.0
    assert laptop.optim == dataclasses.replace(small.optim, weight_decay=laptop.optim.weight_decay)
    assert laptop.model.head_dropout > 0 and laptop.optim.weight_decay > 0
    assert laptop.augment.enabled and not small.augment.enabled
    assert laptop.data == dataclasses.replace(small.data, batch_size=64)
    demo = load_config(["demo"])
    assert demo.data == small.data
    assert [s.name for s in demo.curriculum.stages] == ["av", "coin", "joint"]
    assert laptop.clustering == dataclasses.replace(small.clustering, method="kmeans")
    # A ceiling above where the plateau rule ends stages (benchmarks/README.md, "Longer AA")
    assert laptop.curriculum.max_steps == 6000 > small.curriculum.max_steps
    assert laptop.curriculum.plateau.min_steps == 600
    assert laptop.curriculum.plateau.eval_every == 50
    # AA first, then the paper's coin and joint stages (benchmarks/README.md, "AA first")
    assert [s.name for s in laptop.curriculum.stages] == ["aa", "coin", "joint"]
    assert laptop.curriculum.stages[0].losses == {"aa": 1.0}
    # L_AA as heavy as L_AV in the coin and joint stages (benchmarks/README.md, "A larger alpha")
    assert laptop.curriculum.alpha == 0.5 and small.curriculum.alpha == 0.1
    assert [s.losses for s in laptop.curriculum.stages[1:]] == [
        {"av": 0.5, "aa": 0.5},
        {"av": 0.45, "aa": 0.45, "clust": pytest.approx(0.1)},
    ]
    # The demo keeps the paper's alpha, with which its printed figures were measured.
    assert demo.curriculum.alpha == 0.1


def test_a_file_can_name_its_base_and_cycles_are_user_errors(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: laptop\noptim: {lr: 0.02}\n", encoding="utf-8")
    cfg = load_config([str(mine)])
    assert cfg.optim.lr == 0.02 and cfg.curriculum.max_steps == 6000
    assert cfg.model == load_config(["laptop"]).model
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n", encoding="utf-8")
    with pytest.raises(UserError, match="without a cycle"):
        load_config([str(tmp_path / "a.yaml")])


def test_a_new_run_without_config_trains_the_laptop_preset(tmp_path, monkeypatch):
    import coincide.stages.train as loop

    seen = {}
    monkeypatch.setattr(loop, "train", lambda cfg, *a, **k: seen.setdefault("cfg", cfg))
    loop.run(loop.TrainSettings(tmp_path / "store", tmp_path / "run"))
    assert seen["cfg"] == load_config(["laptop"])


def test_resolved_config_is_written_and_reproduces_the_run(tmp_path):
    cfg = load_config(["small", "row_h"], ["optim.lr=2e-3", "curriculum.stages.0.max_steps=11"])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert written["optim"]["lr"] == 2e-3
    assert written["curriculum"]["negatives"] == "random"
    # Stages are written out in full, so the file needs no recipes to be read back.
    assert written["curriculum"]["stages"] == [
        {
            "name": "av",
            "losses": {"av": 1.0},
            "max_steps": 11,
            "plateau": written["curriculum"]["plateau"],
        }
    ]
    assert load_config([str(path)]) == cfg
    assert config_to_yaml(load_config([str(path)])) == path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("row", "stages", "check"),
    [
        ("row_e", {"aa": 1.0}, lambda c: c.curriculum.negatives == "all"),
        ("row_f", {"av": 1.0}, lambda c: c.data.delta_t == 10.0),
        ("row_g", {"av": 1.0}, lambda c: c.model.audio.arch == c.model.image.arch == "vgg"),
        ("row_h", {"av": 1.0}, lambda c: c.curriculum.negatives == "random"),
        ("row_i", {"av": 1.0}, lambda c: c.data.delta_t == 1.0),
    ],
)
def test_table1_rows_are_one_stage_overlays(row, stages, check):
    for base in ("paper", "small"):
        cfg = load_config([base, row])
        assert [s.losses for s in cfg.curriculum.stages] == [stages]
        assert check(cfg)
        assert cfg.model.embed_dim == 128


def test_table1_rows_j_and_k_are_the_curriculum_without_and_with_clustering():
    j = load_config(["paper", "row_j"])
    k = load_config(["paper", "row_k"])
    assert [s.name for s in j.curriculum.stages] == ["av", "coin"]
    assert [s.name for s in k.curriculum.stages] == ["av", "coin", "joint"]
    assert k.clustering.K == 1_000_000
    assert "clust" not in {n for s in j.curriculum.stages for n in s.losses}


def test_every_recipe_is_a_convex_combination():
    for name, recipe in STAGE_RECIPES.items():
        weights = recipe(0.1, 0.1)
        assert sum(weights.values()) == pytest.approx(1.0), name
        assert all(w >= 0 for w in weights.values()), name


def test_the_presets_have_one_home_in_the_package():
    names = preset_names()
    assert {"paper", "small", "laptop", "row_e", "row_f", "row_g", "row_h", "row_i"} <= set(names)
    assert not (REPO / "configs").exists(), "a second copy of the presets would drift"
    for name in names:
        assert (PACKAGED / f"{name}.yaml").is_file(), name
        load_config(["small", name])  # every preset loads (a row overlay on top of small)
