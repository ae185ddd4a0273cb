"""Tests of scene parameters and the caption grammar (fungizsl.data.scene_params, scene_phrases, scene_captions)."""

import dataclasses
import re

import numpy as np
import pytest

from fungizsl.data import scene_captions as sc
from fungizsl.data import scene_phrases as sp
from fungizsl.data import synthetic
from fungizsl.data.scene_params import SceneParams

CONFIG = synthetic.RenderConfig(image_size=32, stages=synthetic.ALL_STAGES)


@pytest.fixture(scope="module")
def scenes():
    """stage -> 100 scenes of rendered 32 px images (realistic preset)."""
    return {stage: [synthetic.render_scene(stage, i, 0, CONFIG)[1] for i in range(100)]
            for stage in synthetic.ALL_STAGES}


@pytest.fixture(scope="module")
def training_captions(scenes):
    """(stage, SceneCaption) for 5 train-bank draws of every scene."""
    rng = np.random.default_rng(0)
    return [(stage, sc.draw_caption(scene, rng)) for stage, group in scenes.items() for scene in group
            for _ in range(5)]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9%-]+", text.lower()))


# ---------------------------------------------------------------------------------------------- scene params


def test_scene_json_round_trip_and_errors(scenes):
    scene = scenes["hyphae"][3]
    assert SceneParams.from_json(scene.to_json()) == scene
    assert SceneParams.from_json(scene.to_json().encode()) == scene  # TFDS Text features come back as bytes
    with pytest.raises(ValueError, match="unknown field.*petals"):
        SceneParams.from_json('{"stage": "spore", "preset": "paper", "image_size": 8, "petals": 5}')
    with pytest.raises(ValueError, match="missing field.*image_size"):
        SceneParams.from_json('{"stage": "spore", "preset": "paper"}')
    with pytest.raises(ValueError, match="malformed JSON"):
        SceneParams.from_json("{stage")


def test_render_scene_returns_render_image_pixels_for_both_presets():
    for preset in synthetic.PRESETS:
        config = synthetic.RenderConfig(image_size=48, preset=preset, stages=synthetic.ALL_STAGES)
        for stage in synthetic.ALL_STAGES:
            image, scene = synthetic.render_scene(stage, 4, 9, config)
            np.testing.assert_array_equal(image, synthetic.render_image(stage, 4, 9, config))
            assert scene.stage == stage and scene.preset == preset and scene.image_size == 48


def test_scene_numbers_describe_the_stage(scenes):
    """What the renderer reports follows the stage's morphology, and is measured, not configured."""
    for scene in scenes["spore"]:
        assert scene.spores >= 1 and scene.branches == 0 and scene.germinated == 0
        assert 0.3 < scene.spore_aspect <= 1.0 and scene.spore_size > 0
    assert all(s.germinated >= 1 and s.germ_tubes >= s.germinated for s in scenes["germinating_spore"][:50]
               if s.spores >= 6)
    depth = {st: np.median([s.branch_depth for s in scenes[st]]) for st in ("hyphae", "mycelium")}
    cover = {st: np.median([s.coverage for s in scenes[st]]) for st in ("hyphae", "mycelium")}
    assert depth["mycelium"] > depth["hyphae"] and cover["mycelium"] > cover["hyphae"]
    assert all(s.conidiophores > 0 for s in scenes["sporulating_hyphae"][:30] if s.branches > 3)
    # the microscopy families; flat colour on white only with white_background (off by default)
    assert {s.background for group in scenes.values() for s in group} == set(synthetic.BACKGROUNDS) - {"white"}


def test_paper_preset_coverage_is_the_painted_fraction():
    config = synthetic.RenderConfig(image_size=64, preset="paper")
    for stage in synthetic.STAGES:
        image, scene = synthetic.render_scene(stage, 2, 0, config)
        painted = 1.0 - image.astype(np.float64).min(axis=-1) / 255.0  # white = 0, full colour ~ 1
        strength = 1.0 - min(synthetic.PAPER_COLOURS[stage]) / 255.0
        assert scene.coverage == pytest.approx(painted.mean() / strength, abs=0.01)
        assert scene.colour == {"spore": "yellow", "hyphae": "orange", "mycelium": "red"}[stage]


# ---------------------------------------------------------------------------------------------- phrase banks


def test_banks_share_no_phrase_id_or_text():
    for slot, banks in sp.PHRASES.items():
        train = {p.text for p in banks["train"]}
        heldout = {p.text for p in banks["heldout"]}
        assert train and heldout, f"slot {slot} needs phrases in both banks"
        assert not train & heldout, f"slot {slot}: {train & heldout} in both banks"
        ids = [p.id for b in banks.values() for p in b]
        assert len(ids) == len(set(ids))


def test_training_captions_and_heldout_prompts_share_no_phrasing(training_captions):
    train_ids = {i for _, c in training_captions for i in c.phrase_ids}
    prompt_ids = {i for stage in synthetic.ALL_STAGES for c in sc.class_prompts_with_ids(stage) for i in c.phrase_ids}
    assert train_ids and prompt_ids
    assert all(i.startswith("train:") for i in train_ids)
    assert all(i.startswith("heldout:") for i in prompt_ids)
    assert not train_ids & prompt_ids
    # the literal wording of every held-out phrase (3+ words between placeholders) never occurs in training text
    corpus = " || ".join(c.text.lower() for _, c in training_captions)
    for banks in sp.PHRASES.values():
        for phrase in banks["heldout"]:
            for chunk in re.split(r"\{[a-zA-Z_]+\}", phrase.text):
                chunk = " ".join(chunk.strip(" ,.:;").split()).lower()
                if len(chunk.split()) >= 3:
                    assert chunk not in corpus, f"held-out wording {chunk!r} ({phrase.id}) occurs in training"
    prompts = {p for stage in synthetic.ALL_STAGES for p in sc.class_prompts(stage)}
    assert not prompts & {c.text for _, c in training_captions}


def test_training_uses_most_of_its_bank(training_captions):
    train_ids = {i for _, c in training_captions for i in c.phrase_ids}
    reachable = {p.id for slot, banks in sp.PHRASES.items() for p in banks["train"]
                 if not slot.startswith(("imaging.white", "shape.", "size."))}
    assert len(train_ids & reachable) / len(reachable) > 0.9


# ---------------------------------------------------------------------------------------------- truth


def _scene(**kw) -> SceneParams:
    return SceneParams(**{"stage": "spore", "preset": "realistic", "image_size": 224, **kw})


def test_caption_states_the_spore_count_and_shape_of_its_image():
    scene = _scene(spores=3, spore_aspect=0.55, spore_size=4.0, background="darkfield", colour="white")
    elliptical = {p.text for p in sp.PHRASES["shape.elliptical"]["train"]}
    other_shapes = {p.text for s in ("shape.round", "shape.oval") for p in sp.PHRASES[s]["train"]}
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(300):
        drawn = sc.draw_caption(scene, rng)
        text = drawn.text.lower()
        seen |= drawn.mentions
        assert "spore_count" in drawn.mentions  # the subject of a spore image always counts them
        assert re.search(r"\b(three|3)\b", text), text
        assert not re.search(r"\b(one|two|four|five|[0-24-9]\d*)\b", text), text
        if "spore_shape" in drawn.mentions:
            assert any(word in text for word in elliptical), text
            assert not any(re.search(rf"\b{w}\b", text) for w in other_shapes - elliptical if " " not in w), text
        if "background" in drawn.mentions:
            assert "dark" in text or "black" in text, text
    assert {"spore_shape", "spore_size", "background", "stage", "arrangement"} <= seen


def test_caption_states_branching_depth_and_density():
    scene = _scene(stage="mycelium", colonies=4, branch_depth=7, initial_branches=11, branches=900,
                   branches_in_view=800, coverage=0.3, filament_width=1.2)
    dense = {p.text for p in sp.PHRASES["density.dense"]["train"]}
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(300):
        drawn = sc.draw_caption(scene, rng)
        text, seen = drawn.text.lower(), seen | drawn.mentions
        if "branch_depth" in drawn.mentions:
            assert re.search(r"\b(seven|7)\b", text), text
        if "initial_branches" in drawn.mentions:
            assert re.search(r"\b(eleven|11)\b", text), text
        if "density" in drawn.mentions:
            assert any(word in text for word in dense), text
        if "spore_count" in drawn.mentions:  # no spores in view: said so, never a count
            assert not re.search(r"\bspores? (visible|in view)\b", text) or "no " in text, text
    assert {"branch_depth", "initial_branches", "density", "colonies", "stage", "coverage"} <= seen


def test_germinating_caption_counts_germinated_spores():
    scene = _scene(stage="germinating_spore", spores=9, germinated=4, germ_tubes=6, spore_aspect=0.9)
    rng = np.random.default_rng(0)
    for _ in range(100):
        drawn = sc.draw_caption(scene, rng)
        assert "germination" in drawn.mentions
        assert "germ" in drawn.text.lower() or "sprouted" in drawn.text, drawn.text
        assert re.search(r"\b(nine|9)\b", drawn.text.lower())


# ---------------------------------------------------------------------------------------------- variety, seeds


def test_same_generator_state_gives_the_same_caption(scenes):
    scene = scenes["hyphae"][0]
    a = [sc.caption(scene, np.random.default_rng(s)) for s in range(20)]
    b = [sc.caption(scene, np.random.default_rng(s)) for s in range(20)]
    assert a == b and len(set(a)) > 15
    assert sc.class_prompts("mycelium", seed=1) == sc.class_prompts("mycelium", seed=1)


def test_many_distinct_captions_per_class_and_stage_named_about_half(training_captions):
    by_stage = {}
    for stage, drawn in training_captions:
        by_stage.setdefault(stage, []).append(drawn)
    for stage, drawn in by_stage.items():
        texts = [d.text for d in drawn]
        assert len(texts) == 500
        assert len(set(texts)) / len(texts) > 0.9, stage
        named = np.mean(["stage" in d.mentions for d in drawn])
        assert 0.35 < named < 0.65, (stage, named)
        frames = {i for d in drawn for i in d.phrase_ids if i.startswith("train:frame:")}
        assert len(frames) == len(sp.PHRASES["frame"]["train"])


def test_stage_name_is_the_only_giveaway_when_present(training_captions):
    """Without the stage clause, a hyphae caption never names a stage: the text must be read for morphology."""
    for stage, drawn in training_captions:
        if "stage" not in drawn.mentions:
            assert "mycel" not in drawn.text.lower() and "stage" not in drawn.text.lower(), drawn.text


def test_class_prompts_are_many_distinct_and_class_typical():
    for stage in synthetic.ALL_STAGES:
        prompts = sc.class_prompts(stage)
        assert len(prompts) == len(set(prompts)) == 24
    hyphae_words = set().union(*(_words(p) for p in sc.class_prompts("hyphae")))
    mycelium_words = set().union(*(_words(p) for p in sc.class_prompts("mycelium")))
    assert {"dense", "packed"} & mycelium_words and not {"packed"} & hyphae_words
    spore_text = " ".join(sc.class_prompts("spore")).lower()
    assert "germ tube" not in spore_text.replace("germination", "") and "filament" not in spore_text
    with pytest.raises(ValueError, match="no typical scenes"):
        sc.class_prompts("fruiting_body")


def test_unknown_bank_is_an_error():
    with pytest.raises(ValueError, match="phrase bank"):
        sc.draw_caption(_scene(spores=2), np.random.default_rng(0), bank="test")


def test_number_text():
    rng = np.random.default_rng(0)
    assert {sp.number_text(7, rng) for _ in range(50)} == {"7", "seven"}
    assert all(sp.number_text(45, rng, approximate=False) in ("45",) for _ in range(20))
    approx = {sp.number_text(47, rng) for _ in range(200)}
    assert "47" in approx and ("about 45" in approx or "roughly 45" in approx) and "dozens of" in approx


def test_scene_params_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _scene().spores = 3


def test_field_captions_say_several_small_colonies():
    """The layout is a fact of the image: a field of small colonies is said so, a single scene never."""
    field_texts = {p.text for p in sp.PHRASES["imaging.layout.field"]["train"]}
    config = synthetic.RenderConfig(image_size=32, field_fraction=0.5)
    rng = np.random.default_rng(1)
    said = {"field": 0, "single": 0}
    for i in range(30):
        scene = synthetic.render_scene("hyphae", i, 0, config)[1]
        for _ in range(4):
            drawn = sc.draw_caption(scene, rng)
            if "layout" in drawn.mentions:
                said[scene.layout] += 1
                assert any(t in drawn.text.lower() for t in field_texts), drawn.text
    assert said["field"] > 0 and said["single"] == 0
    paper = synthetic.render_scene("mycelium", 0, 0, synthetic.RenderConfig(image_size=32, preset="paper"))[1]
    assert paper.layout == "field"
    assert synthetic.render_scene("spore", 0, 0, synthetic.RenderConfig(image_size=32, preset="paper"))[1].layout \
        == "single"
