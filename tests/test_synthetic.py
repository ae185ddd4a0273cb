"""Tests of the synthetic growth-stage renderer (fungizsl.data.synthetic)."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fungizsl.data import contact_sheets, fungalzsl_generator, synthetic
from fungizsl.data.render_shapes import build_scene
from fungizsl.data.synthetic import (
    EXTRA_STAGES,
    STAGES,
    RenderConfig,
    render_batch,
    render_image,
    render_labelled,
)

PAPER = RenderConfig(preset="paper")
COLONY = RenderConfig(preset="colony")
SMALL = RenderConfig(image_size=64)
FLAT = [RenderConfig(image_size=64, preset=p) for p in ("paper", "colony")]


def _digest(images) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(im).tobytes() for im in images)).hexdigest()


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """Hue of (N, 3) uint8 pixels in degrees, reds mapped to (-180, 180] so they average cleanly."""
    x = rgb.astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    d = mx - mn + 1e-9
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    h = 60.0 * np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return np.where(h > 180, h - 360, h)


# ---------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("config", [SMALL] + FLAT, ids=["realistic", "paper", "colony"])
def test_same_arguments_give_identical_pixels(config):
    for stage in STAGES:
        a = render_image(stage, 3, 11, config)
        b = render_image(stage, 3, 11, config)
        assert np.array_equal(a, b)


@pytest.mark.parametrize("config", [SMALL] + FLAT, ids=["realistic", "paper", "colony"])
def test_different_index_seed_or_stage_differ(config):
    for stage in STAGES:
        base = render_image(stage, 0, 0, config)
        assert not np.array_equal(base, render_image(stage, 1, 0, config))
        assert not np.array_equal(base, render_image(stage, 0, 1, config))
    assert not np.array_equal(render_image("hyphae", 0, 0, config), render_image("mycelium", 0, 0, config))


def test_pixels_identical_in_a_fresh_process():
    code = (
        "import hashlib, numpy as np\n"
        "from fungizsl.data.synthetic import RenderConfig, render_image\n"
        "cfg = RenderConfig(image_size=64)\n"
        "ims = [render_image(s, 5, 7, cfg) for s in ('spore', 'hyphae', 'mycelium')]\n"
        "print(hashlib.sha256(b''.join(np.ascontiguousarray(i).tobytes() for i in ims)).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == _digest([render_image(s, 5, 7, SMALL) for s in ("spore", "hyphae", "mycelium")])


# ---------------------------------------------------------------------------------------------- shape and API


@pytest.mark.parametrize("size", [32, 97, 224])
@pytest.mark.parametrize("preset", synthetic.PRESETS)
def test_shape_and_dtype(size, preset):
    image = render_image("mycelium", 0, 0, RenderConfig(image_size=size, preset=preset))
    assert image.shape == (size, size, 3)
    assert image.dtype == np.uint8


def test_render_batch_matches_render_image_and_broadcasts_a_stage():
    batch = render_batch(["spore", "mycelium", "hyphae"], [4, 2, 9], seed=3, config=SMALL)
    assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch[1], render_image("mycelium", 2, 3, SMALL))
    same_stage = render_batch("hyphae", [0, 1], seed=3, config=SMALL)
    assert np.array_equal(same_stage[1], render_image("hyphae", 1, 3, SMALL))
    with pytest.raises(ValueError):
        render_batch(["spore"], [0, 1], config=SMALL)


def test_render_labelled_cycles_through_the_configured_stages():
    config = RenderConfig(image_size=32, stages=("mycelium", "spore"))
    images, labels = render_labelled(range(5), seed=2, config=config)
    assert labels.tolist() == [0, 1, 0, 1, 0]
    assert np.array_equal(images[3], render_image("spore", 1, 2, config))
    assert np.array_equal(images[4], render_image("mycelium", 2, 2, config))


# ---------------------------------------------------------------------------------------------- paper and colony
# (the paper preset's own facts, the authors' generator's, are tested in tests/test_generators.py)


def _foreground(image: np.ndarray) -> np.ndarray:
    return image.min(axis=-1) < 235  # anything visibly off the white page


@pytest.mark.parametrize("config", [PAPER, COLONY], ids=["paper", "colony"])
def test_flat_presets_have_white_background(config):
    for stage in STAGES:
        image = render_image(stage, 0, 0, config)
        assert np.mean(image.reshape(-1, 3).min(axis=1) == 255) > 0.4  # most of the page is pure white
        assert np.array_equal(image[0, 0], [255, 255, 255]) or np.array_equal(image[-1, -1], [255, 255, 255])


def test_colony_preset_foreground_grows_with_stage():
    fraction = {s: np.mean([_foreground(render_image(s, i, 0, COLONY)).mean() for i in range(10)]) for s in STAGES}
    assert fraction["mycelium"] > 2.0 * fraction["hyphae"]
    assert fraction["hyphae"] > 1.5 * fraction["spore"]
    assert fraction["spore"] > 0.005


def test_colony_preset_hue_runs_yellow_orange_red():
    hue = {}
    for stage in STAGES:
        pixels = [im[_foreground(im)] for im in (render_image(stage, i, 0, COLONY) for i in range(6))]
        hue[stage] = _hue_degrees(np.concatenate(pixels)).mean()
    assert 45 < hue["spore"] < 60  # yellow
    assert 25 < hue["hyphae"] < 40  # orange
    assert -10 < hue["mycelium"] < 10  # red


# ---------------------------------------------------------------------------------------------- realistic preset


def _colour_separability(config: RenderConfig, n: int = 24) -> tuple[float, float]:
    """How much the per-image mean colour tells the stage.

    Returns (largest between-stage difference of mean colour / pooled within-stage std, over the
    RGB channels; leave-one-out nearest-centroid accuracy on mean colour).  Chance accuracy is 1/3.
    """
    feats = [np.array([render_image(s, i, 0, config).reshape(-1, 3).mean(0) for i in range(n)]) for s in STAGES]
    means = np.array([f.mean(0) for f in feats])
    within = np.sqrt(np.mean([f.var(0, ddof=1) for f in feats], axis=0))
    ratio = float(((means.max(0) - means.min(0)) / np.maximum(within, 1e-9)).max())
    x, y = np.concatenate(feats), np.repeat(np.arange(len(STAGES)), n)
    correct = 0
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        centroids = np.array([x[rest & (y == c)].mean(0) for c in range(len(STAGES))])
        correct += int(np.argmin(((centroids - x[i]) ** 2).sum(1)) == y[i])
    return ratio, correct / len(x)


def test_colour_does_not_predict_stage_in_realistic_preset():
    ratio, accuracy = _colour_separability(SMALL)
    assert ratio < 0.8
    assert accuracy < 0.55


def test_colour_predicts_stage_in_colony_and_paper_presets():
    # the same measure must see the flat presets' colour shortcut, or the test above proves nothing
    ratio, accuracy = _colour_separability(RenderConfig(image_size=64, preset="colony"))
    assert ratio > 5.0
    assert accuracy > 0.8
    assert _colour_separability(RenderConfig(image_size=64, preset="paper"), n=12)[1] > 0.8


def test_realistic_backgrounds_vary():
    corners = np.array([render_image("spore", i, 0, SMALL)[:4, :4].reshape(-1, 3).mean(0) for i in range(16)])
    assert corners.std(axis=0).min() > 15.0  # dark-field, stained and bright-field fields all occur
    kinds = {synthetic.sample_style(synthetic.image_rng("spore", i, 0), 64).kind for i in range(40)}
    assert kinds == set(synthetic.BACKGROUNDS)
    micro = {synthetic.sample_style(synthetic.image_rng("spore", i, 0), 64, white=False).kind for i in range(40)}
    assert micro == set(synthetic.BACKGROUNDS) - {"white"}


# ---------------------------------------------------------------------------------------------- domain randomisation

FIELD = RenderConfig(image_size=64, field_fraction=1.0)


def test_field_layout_is_deterministic_and_respects_its_ranges():
    for stage in ("hyphae", "mycelium"):
        for i in range(6):
            image, scene = synthetic.render_scene(stage, i, 3, FIELD)
            np.testing.assert_array_equal(image, render_image(stage, i, 3, FIELD))
            assert scene.layout == "field"
            assert FIELD.n_colonies[0] <= scene.colonies <= FIELD.n_colonies[1]
            lo, hi = FIELD.field_magnification
            assert lo <= scene.magnification <= hi
    # free spores have no colonies to scatter: one scene at the usual magnification
    spores = [synthetic.render_scene("spore", i, 3, FIELD)[1] for i in range(6)]
    assert all(s.layout == "single" and 0.6 <= s.magnification <= 1.7 for s in spores)


def test_field_fraction_sets_the_share_of_fields():
    none = RenderConfig(image_size=32, field_fraction=0.0)
    assert all(synthetic.render_scene("hyphae", i, 0, none)[1].layout == "single" for i in range(10))
    some = RenderConfig(image_size=32, field_fraction=0.5)
    layouts = [synthetic.render_scene("mycelium", i, 0, some)[1].layout for i in range(40)]
    assert 8 <= layouts.count("field") <= 32


def test_field_colonies_are_smaller_than_single_scenes():
    single = RenderConfig(image_size=64, field_fraction=0.0)
    width = {c.field_fraction: np.median([synthetic.render_scene("hyphae", i, 0, c)[1].filament_width
                                          for i in range(12)]) for c in (single, FIELD)}
    assert width[1.0] < 0.5 * width[0.0]


def test_white_family_is_flat_colour_on_white():
    assert not RenderConfig().white_background and RenderConfig().field_fraction == 0  # the defaults: as before
    config = RenderConfig(image_size=48, white_background=True)
    found = 0
    for i in range(40):
        image, scene = synthetic.render_scene("hyphae", i, 0, config)
        if scene.background == "white":
            found += 1
            assert scene.medium_colour == "white" and scene.noise <= 3.0 and scene.debris_specks == 0
            assert np.median(image.reshape(-1, 3).min(axis=1)) > 225  # mostly page
    assert found >= 3


def _mean_segments(stage: str, overlap: float, n: int = 20) -> float:
    counts = []
    for i in range(n):
        rng = np.random.default_rng([99, i])
        morph = synthetic.realistic_morphology(rng, stage, 224, overlap)
        counts.append(len(build_scene(rng, stage, morph).lines[0]))
    return float(np.mean(counts))


def test_overlap_zero_separates_hyphae_from_mycelium():
    assert _mean_segments("mycelium", 0.0) > 5.0 * _mean_segments("hyphae", 0.0)


def test_overlap_one_draws_hyphae_and_mycelium_from_one_distribution():
    assert synthetic.network_ranges("hyphae", 1.0) == synthetic.network_ranges("mycelium", 1.0)
    assert synthetic.network_ranges("hyphae", 0.5) != synthetic.network_ranges("mycelium", 0.5)
    for i in range(5):  # same random stream -> the very same morphology for both stages
        a = synthetic.realistic_morphology(np.random.default_rng(i), "hyphae", 224, 1.0)
        b = synthetic.realistic_morphology(np.random.default_rng(i), "mycelium", 224, 1.0)
        assert a == b
    a = synthetic.realistic_morphology(np.random.default_rng(0), "hyphae", 224, 0.0)
    b = synthetic.realistic_morphology(np.random.default_rng(0), "mycelium", 224, 0.0)
    assert a != b


# ---------------------------------------------------------------------------------------------- extra stages


@pytest.mark.parametrize("stage", EXTRA_STAGES)
@pytest.mark.parametrize("preset", synthetic.PRESETS)
def test_extra_stages_render(stage, preset):
    config = RenderConfig(image_size=96, preset=preset, stages=STAGES + (stage,))
    image = render_image(stage, 1, 0, config)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert image.std() > 5.0  # something was drawn
    if preset == "colony":
        assert np.isclose(_hue_degrees(image[_foreground(image)]).mean(),
                          _hue_degrees(np.array([synthetic.COLONY_COLOURS[stage]], np.uint8))[0], atol=3.0)
    if preset == "paper":  # between the stage's two end colours
        ends = _hue_degrees(np.array(fungalzsl_generator.STAGE_COLOURS[stage]) * 255.0)
        assert ends.min() - 1 < _hue_degrees(image[_foreground(image)]).mean() < ends.max() + 1


def test_germinating_spores_carry_tubes_and_sporulating_hyphae_carry_conidia():
    rng = np.random.default_rng(0)
    germ = build_scene(rng, "germinating_spore", synthetic.colony_morphology(rng, "germinating_spore", 224))
    assert len(germ.lines[0]) > 0
    rng = np.random.default_rng(0)
    spor = build_scene(rng, "sporulating_hyphae", synthetic.colony_morphology(rng, "sporulating_hyphae", 224))
    rng = np.random.default_rng(0)
    plain = build_scene(rng, "hyphae", synthetic.colony_morphology(rng, "hyphae", 224))
    assert len(spor.cells) > len(plain.cells) and len(spor.cells[-1]) > 0


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, bad", [
    (lambda: render_image("conidium", 0), "conidium"),
    (lambda: RenderConfig(preset="fancy"), "fancy"),
    (lambda: RenderConfig(stages=("spore", "rust")), "rust"),
])
def test_unknown_names_raise_with_the_valid_ones(call, bad):
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert repr(bad) in message
    assert ("spore" in message and "mycelium" in message) or ("realistic" in message and "paper" in message)


@pytest.mark.parametrize("kwargs", [dict(hyphae_mycelium_overlap=1.5), dict(image_size=4), dict(stages=()),
                                    dict(field_fraction=1.5), dict(n_colonies=(5, 2)),
                                    dict(field_magnification=(0.0, 0.5))])
def test_bad_config_values_raise(kwargs):
    with pytest.raises(ValueError):
        RenderConfig(**kwargs)


def test_negative_index_or_seed_raise():
    with pytest.raises(ValueError):
        render_image("spore", -1, 0, SMALL)
    with pytest.raises(ValueError):
        render_image("spore", 0, -3, SMALL)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_writes_contact_sheet(tmp_path):
    from fungizsl import cli

    out = tmp_path / "sheet.png"
    argv = ["render", "--out", str(out), "--per-stage", "3", "--size", "48", "--preset", "paper",
            "--seed", "2", "--stages", "spore,mycelium"]
    assert cli.main(argv) == 0
    sheet = Image.open(out)
    assert sheet.format == "PNG"
    assert sheet.size == contact_sheets.sheet_size(2, 3, 48)
    assert sheet.width >= 3 * 48 and sheet.height >= 2 * 48
    x, y = contact_sheets.tile_origin(1, 2, 48)  # row "mycelium", third sample
    tile = np.asarray(sheet.convert("RGB"))[y:y + 48, x:x + 48]
    assert np.array_equal(tile, render_image("mycelium", 2, 2, RenderConfig(image_size=48, preset="paper")))


def test_cli_renders_the_randomised_look_the_main_job_trains_on(tmp_path):
    from fungizsl import cli
    from fungizsl.data.synthetic import RANDOMISED

    out = tmp_path / "train.png"
    assert cli.main(["render", "--out", str(out), "--per-stage", "2", "--size", "40", "--randomised"]) == 0
    x, y = contact_sheets.tile_origin(1, 1, 40)  # row "hyphae", second sample
    tile = np.asarray(Image.open(out).convert("RGB"))[y:y + 40, x:x + 40]
    assert np.array_equal(tile, render_image("hyphae", 1, 0, RenderConfig(image_size=40, **RANDOMISED)))
    assert cli.main(["render", "--out", str(out), "--randomised", "--preset", "paper"]) == 2


def test_cli_writes_captioned_sheet_and_prints_the_captions(tmp_path, capsys):
    from fungizsl import cli

    out = tmp_path / "captions.png"
    argv = ["render", "--captions", "--out", str(out), "--per-stage", "2", "--size", "40", "--stages", "spore,hyphae"]
    assert cli.main(argv) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("wrote")]
    assert [line.split(":")[0] for line in printed] == ["spore 0", "spore 1", "hyphae 0", "hyphae 1"]
    sheet, listing = contact_sheets.captioned_sheet(RenderConfig(image_size=40, stages=("spore", "hyphae")), 2)
    assert [f"{stage} {i}: {text}" for stage, i, text in listing] == printed
    assert Image.open(out).size == sheet.size
    rows = np.asarray(sheet.convert("L"))[40:, : contact_sheets.CAPTION_TILE_WIDTH]  # the text under the first image
    assert (rows < 100).sum() > 200


def test_cli_rejects_bad_stage(tmp_path, capsys):
    from fungizsl import cli

    out = tmp_path / "sheet.png"
    assert cli.main(["render", "--out", str(out), "--stages", "spore,toadstool"]) == 2
    assert "toadstool" in capsys.readouterr().err
    assert not out.exists()
