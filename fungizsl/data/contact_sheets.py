"""Contact sheets of synthetic growth-stage images, and the ``fungizsl render`` command.

A contact sheet is one PNG with a row per stage and a column per sample index, each row labelled
with its stage (:func:`contact_sheet`); :func:`captioned_sheet` writes each image's scene caption
(:mod:`fungizsl.data.scene_captions`, train phrase bank) under it. The images are those of
:func:`fungizsl.data.synthetic.render_image`, so a tile can be checked pixel for pixel::

    fungizsl render --out sheet.png --per-stage 8 --size 224 --preset realistic --overlap 0.3
    fungizsl render --captions --out captions.png --per-stage 4 --size 96
    fungizsl render --out unseen.png --preset unseen --size 96   # the evaluation-only generator
    fungizsl render --out train.png --randomised --size 96       # what the main job trains on

``--preset unseen`` shows the independent generator of :mod:`fungizsl.data.unseen_renderer`
(evaluation only: the ``test_unseen*`` splits), so its images can be looked at beside the
training renderer's.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from PIL import Image, ImageDraw, ImageFont

from fungizsl.data import unseen_renderer
from fungizsl.data.scene_pipeline import caption_examples
from fungizsl.data.synthetic import ALL_STAGES, PRESETS, RANDOMISED, STAGES, RenderConfig, render_image, render_scene

UNSEEN = "unseen"  # --preset value that shows the evaluation-only generator

SHEET_LABEL_WIDTH, SHEET_HEADER, SHEET_GAP = 170, 26, 4


def sheet_size(n_stages: int, per_stage: int, image_size: int) -> tuple[int, int]:
    """(width, height) of a contact sheet."""
    return (SHEET_LABEL_WIDTH + per_stage * (image_size + SHEET_GAP) + SHEET_GAP,
            SHEET_HEADER + n_stages * (image_size + SHEET_GAP) + SHEET_GAP)


def tile_origin(row: int, col: int, image_size: int) -> tuple[int, int]:
    """Top-left (x, y) of the tile of stage `row`, sample `col` on a contact sheet."""
    return (SHEET_LABEL_WIDTH + SHEET_GAP + col * (image_size + SHEET_GAP),
            SHEET_HEADER + SHEET_GAP + row * (image_size + SHEET_GAP))


def contact_sheet(config: RenderConfig | unseen_renderer.UnseenConfig, per_stage: int = 8,
                  seed: int = 0) -> Image.Image:
    """Rows = config.stages, columns = indices 0..per_stage-1, each row labelled with its stage.

    An :class:`~fungizsl.data.unseen_renderer.UnseenConfig` draws the evaluation-only generator.
    """
    size = config.image_size
    sheet = Image.new("RGB", sheet_size(len(config.stages), per_stage, size), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font = _font(15)
    unseen = isinstance(config, unseen_renderer.UnseenConfig)
    preset = UNSEEN if unseen else config.preset
    title = f"fungizsl {'unseen generator (evaluation only)' if unseen else 'synthetic stages'}  preset={preset}  " \
            f"seed={seed}  size={size}"
    if preset == "realistic":
        title += f"  overlap={config.hyphae_mycelium_overlap:g}"
    draw.text((SHEET_GAP, 5), title, fill=(0, 0, 0), font=font)
    for row, stage in enumerate(config.stages):
        y = tile_origin(row, 0, size)[1]
        draw.text((SHEET_GAP + 2, y + size // 2 - 8), stage, fill=(0, 0, 0), font=font)
        for col in range(per_stage):
            image = (unseen_renderer.render_unseen(stage, col, seed, config)[0] if unseen
                     else render_image(stage, col, seed, config))
            sheet.paste(Image.fromarray(image), tile_origin(row, col, size))
    return sheet


CAPTION_TILE_WIDTH, CAPTION_LINES, CAPTION_LINE_HEIGHT = 300, 9, 14


def captioned_sheet(config: RenderConfig, per_stage: int = 4, seed: int = 0,
                    caption_seed: int = 0) -> tuple[Image.Image, list[tuple[str, int, str]]]:
    """A contact sheet with each image's scene caption (train phrase bank) written under it.

    Returns the sheet and the (stage, index, caption) of every tile.
    """
    size = config.image_size
    cell_w = max(size, CAPTION_TILE_WIDTH)
    cell_h = size + CAPTION_LINES * CAPTION_LINE_HEIGHT + 3 * SHEET_GAP
    sheet = Image.new("RGB", (per_stage * (cell_w + SHEET_GAP) + SHEET_GAP,
                              SHEET_HEADER + len(config.stages) * (cell_h + SHEET_GAP)), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font, small = _font(15), _font(12)
    draw.text((SHEET_GAP, 5), f"fungizsl scene captions  preset={config.preset}  seed={seed}  "
                              f"caption_seed={caption_seed}  size={size}", fill=(0, 0, 0), font=font)
    chars = max(20, int(cell_w / 6.3))
    rendered = [(stage, i, *render_scene(stage, i, seed, config)) for stage in config.stages for i in range(per_stage)]
    texts = caption_examples([scene for *_, scene in rendered], caption_seed)
    listing = []
    for k, ((stage, i, image, _), text) in enumerate(zip(rendered, texts)):
        row, col = divmod(k, per_stage)
        x = SHEET_GAP + col * (cell_w + SHEET_GAP)
        y = SHEET_HEADER + row * (cell_h + SHEET_GAP)
        sheet.paste(Image.fromarray(image), (x + (cell_w - size) // 2, y))
        lines = textwrap.wrap(f"[{stage} {i}] {text}", chars)
        if len(lines) > CAPTION_LINES:
            lines = lines[: CAPTION_LINES - 1] + [lines[CAPTION_LINES - 1][: chars - 3] + "..."]
        for n, line in enumerate(lines):
            draw.text((x, y + size + SHEET_GAP + n * CAPTION_LINE_HEIGHT), line, fill=(0, 0, 0), font=small)
        listing.append((stage, i, text))
    return sheet, listing


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add `render`: write a labelled contact sheet PNG of sample images per stage."""
    parser = subparsers.add_parser("render", help="write a contact sheet of synthetic growth-stage images",
                                   description="Render samples of each growth stage into one labelled PNG.")
    parser.add_argument("--out", default="sheet.png", help="output PNG path")
    parser.add_argument("--per-stage", type=int, default=8, help="samples (columns) per stage")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--preset", default="realistic",
                        help=f"one of {', '.join(PRESETS)}, or {UNSEEN} (the evaluation-only generator)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overlap", type=float, default=0.3, help="hyphae/mycelium overlap in [0, 1] (realistic)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list from {', '.join(ALL_STAGES)}")
    parser.add_argument("--captions", action="store_true",
                        help="write each image's scene caption under it (and print the captions)")
    parser.add_argument("--randomised", action="store_true",
                        help="the main job's randomised renders (synthetic.RANDOMISED; realistic preset)")
    parser.set_defaults(func=run_render_cli)
    return parser


def run_render_cli(args: argparse.Namespace) -> int:
    try:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        if args.preset == UNSEEN:
            if args.captions:
                raise ValueError("--captions shows the training renderer's scene captions: not with --preset unseen")
            config = unseen_renderer.UnseenConfig(image_size=args.size, stages=stages)
        else:
            if args.randomised and args.preset != "realistic":
                raise ValueError(f"--randomised draws the realistic preset, not {args.preset!r}")
            config = RenderConfig(image_size=args.size, preset=args.preset, hyphae_mycelium_overlap=args.overlap,
                                  stages=stages, **(RANDOMISED if args.randomised else {}))
        if args.per_stage < 1 or args.seed < 0:
            raise ValueError("--per-stage must be >= 1 and --seed >= 0")
    except ValueError as err:
        print(f"fungizsl render: {err}", file=sys.stderr)
        return 2
    if args.captions:
        sheet, listing = captioned_sheet(config, args.per_stage, args.seed)
        for stage, index, text in listing:
            print(f"{stage} {index}: {text}")
    else:
        sheet = contact_sheet(config, args.per_stage, args.seed)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}, {len(stages)} stages x {args.per_stage})")
    return 0
