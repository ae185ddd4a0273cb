"""A synthetic few-shot species set shaped like FungiCLEF 2025 (FungiTastic-FewShot), for the
embedded default run of the Lu et al. system (`./launch/local.sh fungiclef`).

What is like the real data:

* a taxonomy (families -> genera -> species); a species is its genus' mushroom (cap shape,
  cap colour, gill count, stem proportions, spots, ring) with small changes of its own, so
  species of one genus look alike and Top-1 is far from trivial;
* 1 to 4 training observations per species, a validation year and a test year (observations of
  species seen in training), 1 to several images per observation: every image is another view
  (rotation, zoom/crop, lighting, background) of the same specimen, which has its own size,
  age and colour drift;
* a `poisonous` flag per species (mostly by genus, as in real life);
* metadata drawn from per-species priors (habitat, substrate, season, region with coordinates,
  elevation) concentrated on a few values but overlapping between species: it helps, it does
  not decide.

It is written in the Kaggle download's layout with the real CSV columns,

    metadata/FungiTastic-FewShot/FungiTastic-FewShot-{Train,Val,Test}.csv
    images/FungiTastic-FewShot/{train,val,test}/300p/<filename>

so `fungizsl build fungiclef2025 --config 300p --manual-dir DIR` reads it exactly as it reads
the real download. Unlike the real Test CSV, the synthetic one keeps its labels (so the embedded
run can score its test split once). Everything is a pure function of `seed` (the data seed,
separate from training seeds).
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import dataclasses
import time

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

CSV_DIR = "metadata/FungiTastic-FewShot"
IMAGE_DIR = "images/FungiTastic-FewShot"
CSV_FILES = {"train": "FungiTastic-FewShot-Train.csv", "val": "FungiTastic-FewShot-Val.csv",
             "test": "FungiTastic-FewShot-Test.csv"}
COLUMNS = ("filename", "observationID", "category_id", "eventDate", "year", "month", "day", "habitat",
           "substrate", "metaSubstrate", "landcover", "region", "district", "biogeographicalRegion",
           "countryCode", "latitude", "longitude", "coorUncert", "elevation", "hasCoordinate", "kingdom",
           "phylum", "class", "order", "family", "genus", "specificEpithet", "species", "scientificName",
           "iucnRedListCategory", "poisonous")
HABITATS = ("Deciduous woodland", "Mixed woodland", "Coniferous woodland", "park/churchyard", "Bog",
            "dune", "natural grassland", "hedgerow", "garden", "Willow scrubland")
SUBSTRATES = ("soil", "leaf or needle litter", "dead wood (including bark)", "wood chips or mulch",
              "mosses", "bark of living trees", "cones", "grass", "stems of herbs")
META_SUBSTRATE = {"soil": "soil", "leaf or needle litter": "litter", "dead wood (including bark)": "wood",
                  "wood chips or mulch": "wood", "mosses": "mosses", "bark of living trees": "wood",
                  "cones": "litter", "grass": "plants", "stems of herbs": "plants"}
LANDCOVER = {h: c for h, c in zip(HABITATS, ("Forest", "Forest", "Forest", "Urban", "Wetland", "Coast",
                                             "Grassland", "Farmland", "Urban", "Wetland"))}
# (name, latitude, longitude, biogeographical region) of Danish regions and a few districts each
REGIONS = (("Nordjylland", 57.05, 9.92, "continental"), ("Midtjylland", 56.16, 9.55, "continental"),
           ("Syddanmark", 55.40, 9.40, "atlantic"), ("Sjælland", 55.45, 11.80, "continental"),
           ("Hovedstaden", 55.75, 12.45, "continental"), ("Bornholm", 55.12, 14.92, "continental"))
SHAPES = ("convex", "flat", "conical", "funnel", "bell")
SYLLABLES = ("my", "co", "ra", "li", "to", "ph", "ga", "ne", "su", "tri", "cho", "lo", "ma", "ru", "pe",
             "xe", "bo", "ci", "da", "ve", "the", "la", "ni", "po", "sa")


@dataclasses.dataclass(frozen=True)
class SpeciesSetConfig:
    num_species: int = 300
    species_per_genus: float = 7.0
    genera_per_family: float = 4.0
    image_size: int = 64
    train_obs_probs: tuple[float, ...] = (0.35, 0.3, 0.2, 0.15)  # P(1, 2, 3, 4 training observations)
    val_fraction: float = 0.35  # chance that a species has an observation in the validation year
    test_fraction: float = 0.5
    mean_extra_images: float = 1.3  # images per observation = 1 + Poisson(this), at most max_images
    max_images: int = 6
    poisonous_genus_fraction: float = 0.15
    seed: int = 0


# -------------------------------------------------------------------------------------------------
# Species, genera, families
# -------------------------------------------------------------------------------------------------

def _name(rng, parts: int, suffix: str) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize() + suffix


def _genus_look(rng) -> dict:
    return dict(shape=int(rng.integers(len(SHAPES))), hue=float(rng.uniform(0, 1)),
                sat=float(rng.uniform(0.3, 0.9)), val=float(rng.uniform(0.45, 0.95)),
                cap_w=float(rng.uniform(0.45, 0.75)), cap_h=float(rng.uniform(0.18, 0.4)),
                stem_w=float(rng.uniform(0.07, 0.18)), stem_h=float(rng.uniform(0.25, 0.5)),
                gills=int(rng.integers(4, 14)), spots=float(rng.uniform(0, 1) < 0.35),
                ring=float(rng.uniform(0, 1) < 0.4), stem_hue=float(rng.uniform(0.05, 0.15)))


def _species_look(rng, genus: dict) -> dict:
    """The genus' mushroom with small, species-specific changes."""
    look = dict(genus)
    look["hue"] = (genus["hue"] + rng.normal(0, 0.035)) % 1.0
    look["sat"] = float(np.clip(genus["sat"] + rng.normal(0, 0.08), 0.15, 1))
    look["val"] = float(np.clip(genus["val"] + rng.normal(0, 0.07), 0.3, 1))
    for key in ("cap_w", "cap_h", "stem_w", "stem_h"):
        look[key] = genus[key] * float(np.exp(rng.normal(0, 0.12)))
    look["gills"] = int(max(3, genus["gills"] + rng.integers(-2, 3)))
    if rng.uniform() < 0.25:  # a spotted/unspotted or ringed/unringed sister species
        key = "spots" if rng.uniform() < 0.5 else "ring"
        look[key] = 1.0 - genus[key]
    look["spot_density"] = float(rng.uniform(4, 14))
    return look


def _prior(rng, n: int, concentration: float, favourites=None) -> np.ndarray:
    """A categorical distribution over n values, peaked on a few (shared with relatives)."""
    alpha = np.full(n, concentration)
    if favourites is not None:
        alpha[favourites] += 2.0
    return rng.dirichlet(alpha)


def make_species(config: SpeciesSetConfig) -> list[dict]:
    rng = np.random.default_rng([config.seed, 1])
    num_genera = max(2, round(config.num_species / config.species_per_genus))
    num_families = max(1, round(num_genera / config.genera_per_family))
    families = [_name(rng, 2, "aceae") for _ in range(num_families)]
    genera = []
    for g in range(num_genera):
        genera.append(dict(name=_name(rng, 3, ""), family=families[g % num_families], look=_genus_look(rng),
                           poisonous=rng.uniform() < config.poisonous_genus_fraction,
                           habitats=rng.choice(len(HABITATS), 2, replace=False),
                           substrates=rng.choice(len(SUBSTRATES), 2, replace=False),
                           month=float(rng.uniform(5, 11.5)),
                           regions=rng.choice(len(REGIONS), 2, replace=False)))
    species = []
    for c in range(config.num_species):
        genus = genera[int(rng.integers(num_genera)) if c >= num_genera else c]
        epithet = _name(rng, 2, "a").lower()
        poisonous = genus["poisonous"] if rng.uniform() < 0.85 else (not genus["poisonous"])
        species.append(dict(
            category_id=c, genus=genus["name"], family=genus["family"], epithet=epithet,
            name=f"{genus['name']} {epithet}", poisonous=int(poisonous), look=_species_look(rng, genus["look"]),
            habitat=_prior(rng, len(HABITATS), 0.3, genus["habitats"]),
            substrate=_prior(rng, len(SUBSTRATES), 0.3, genus["substrates"]),
            region=_prior(rng, len(REGIONS), 0.5, genus["regions"]),
            month=float(np.clip(genus["month"] + rng.normal(0, 1.0), 1, 12)), month_sd=float(rng.uniform(0.8, 2.0)),
            elevation=float(rng.uniform(0, 150)), spot=(float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.4, 0.4)))))
    return species


# -------------------------------------------------------------------------------------------------
# Rendering: one specimen, many views
# -------------------------------------------------------------------------------------------------

def _rgb(h, s, v) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return int(r * 255), int(g * 255), int(b * 255)


def make_specimen(rng, species: dict) -> dict:
    """One specimen of a species: size, age (how open the cap is) and colour drift."""
    return dict(look=species["look"], scale=float(rng.uniform(0.8, 1.1)), age=float(rng.uniform(0.0, 1.0)),
                hue_drift=float(rng.normal(0, 0.01)), val_drift=float(rng.normal(0, 0.04)),
                lean=float(rng.normal(0, 6)), seed=int(rng.integers(2 ** 31)))


def _cap_polygon(shape: str, cx, top, w, h, age, n=24):
    """Upper outline of the cap from left to right, then its underside."""
    t = np.linspace(-1, 1, n)
    if shape == "convex":
        y = np.sqrt(np.maximum(0, 1 - t ** 2))
    elif shape == "flat":
        y = np.clip(1.6 * (1 - np.abs(t) ** 4), 0, 1)
    elif shape == "conical":
        y = 1 - np.abs(t) ** (1.0 - 0.4 * age)
    elif shape == "funnel":
        y = 0.35 + 0.65 * np.abs(t) ** 1.5
    else:  # bell
        y = np.sqrt(np.maximum(0, 1 - np.abs(t) ** 2.5)) * (1 + 0.2 * (1 - np.abs(t)))
    y = np.clip(y, 0, 1.2)
    width = w * (0.85 + 0.3 * age)
    xs, ys = cx + t * width / 2, top + h * (1 - y / max(y.max(), 1e-6))
    under = top + h
    return list(zip(xs, ys)) + [(cx + width / 2, under), (cx - width / 2, under)], width


def render_view(specimen: dict, view_rng, size: int, background: tuple[int, int, int]) -> np.ndarray:
    """One photograph of the specimen: its drawing at 2x, then rotation, zoom/crop, lighting."""
    look = specimen["look"]
    big = 2 * size
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    rng = np.random.default_rng(specimen["seed"])  # the specimen's own texture, the same in every view
    noise = rng.integers(-14, 15, size=(8, 8, 3))
    s = big * specimen["scale"]
    cx, ground = big / 2, big * 0.88
    stem_w, stem_h = look["stem_w"] * s, look["stem_h"] * s
    cap_w, cap_h = look["cap_w"] * s, look["cap_h"] * s * (1.1 - 0.3 * specimen["age"])
    cap_top = ground - stem_h - cap_h
    stem_colour = _rgb(look["stem_hue"], 0.25, 0.85 + specimen["val_drift"])
    draw.polygon([(cx - stem_w / 2, ground), (cx + stem_w / 2, ground), (cx + stem_w * 0.4, cap_top + cap_h),
                  (cx - stem_w * 0.4, cap_top + cap_h)], fill=stem_colour)
    if look["ring"]:
        ry = cap_top + cap_h + stem_h * 0.25
        draw.ellipse([cx - stem_w * 0.8, ry - stem_w * 0.2, cx + stem_w * 0.8, ry + stem_w * 0.25],
                     fill=_rgb(look["stem_hue"], 0.15, 0.95))
    cap_colour = _rgb(look["hue"] + specimen["hue_drift"], look["sat"], look["val"] + specimen["val_drift"])
    polygon, width = _cap_polygon(SHAPES[look["shape"]], cx, cap_top, cap_w, cap_h, specimen["age"])
    draw.polygon(polygon, fill=cap_colour)
    gill_colour = _rgb(look["hue"], look["sat"] * 0.4, (look["val"] + specimen["val_drift"]) * 0.55)
    under = cap_top + cap_h
    for x in np.linspace(cx - width / 2 * 0.9, cx + width / 2 * 0.9, look["gills"]):
        draw.line([(x, under), (cx + (x - cx) * 0.3, under + cap_h * 0.22)], fill=gill_colour, width=2)
    if look["spots"]:
        count = int(look["spot_density"])
        for _ in range(count):
            u = rng.uniform(-0.4, 0.4) + look.get("spot_bias", 0.0)
            v = rng.uniform(0.25, 0.75)
            r = rng.uniform(0.02, 0.045) * s
            x, y = cx + u * width, cap_top + v * cap_h
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_rgb(look["hue"] + 0.5, 0.1, 0.97))
    # the view
    canvas = canvas.rotate(float(view_rng.normal(specimen["lean"], 15)), resample=Image.BILINEAR,
                           fillcolor=background)
    zoom = view_rng.uniform(0.7, 1.0)
    crop = big * zoom
    x0 = view_rng.uniform(0, big - crop)
    y0 = view_rng.uniform(0, big - crop)
    canvas = canvas.crop((x0, y0, x0 + crop, y0 + crop)).resize((size, size), Image.BILINEAR)
    if view_rng.uniform() < 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(view_rng.uniform(0.3, 0.9)))
    image = np.asarray(canvas, np.float32)
    light = view_rng.uniform(0.75, 1.2) * (1 + view_rng.normal(0, 0.04, 3))
    tint = np.kron(noise, np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
    image = image * light + tint + view_rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------------------
# Observations and metadata
# -------------------------------------------------------------------------------------------------

def _metadata(rng, species: dict, year: int) -> dict:
    habitat = HABITATS[rng.choice(len(HABITATS), p=species["habitat"])]
    substrate = SUBSTRATES[rng.choice(len(SUBSTRATES), p=species["substrate"])]
    region_i = rng.choice(len(REGIONS), p=species["region"])
    region, lat, lon, bio = REGIONS[region_i]
    month = int(np.clip(round(rng.normal(species["month"], species["month_sd"])), 1, 12))
    day = int(rng.integers(1, 29))
    lat, lon = lat + rng.normal(0, 0.25), lon + rng.normal(0, 0.35)
    blank = lambda value, p=0.08: "" if rng.uniform() < p else value
    return dict(eventDate=f"{year}-{month:02d}-{day:02d}", year=year, month=month, day=day,
                habitat=blank(habitat), substrate=blank(substrate), metaSubstrate=META_SUBSTRATE[substrate],
                landcover=LANDCOVER[habitat], region=region, district=f"{region} {int(rng.integers(1, 4))}",
                biogeographicalRegion=bio, countryCode="DK", latitude=f"{lat:.5f}", longitude=f"{lon:.5f}",
                coorUncert=f"{rng.uniform(10, 500):.0f}",
                elevation=f"{max(0.0, rng.normal(species['elevation'], 25)):.1f}", hasCoordinate="True")


BACKGROUNDS = {"Deciduous woodland": (96, 78, 52), "Mixed woodland": (84, 84, 56), "Coniferous woodland": (70, 60, 48),
               "park/churchyard": (92, 130, 70), "Bog": (90, 100, 60), "dune": (196, 180, 140),
               "natural grassland": (104, 140, 72), "hedgerow": (80, 100, 58), "garden": (100, 120, 80),
               "Willow scrubland": (88, 96, 66)}


def plan_observations(config: SpeciesSetConfig, species: list[dict]) -> list[dict]:
    """Every observation: split, species, specimen, metadata, number of images."""
    rng = np.random.default_rng([config.seed, 2])
    observations = []
    next_id = 1000
    for sp in species:
        counts = {"train": int(rng.choice(len(config.train_obs_probs), p=config.train_obs_probs)) + 1,
                  "val": int(rng.uniform() < config.val_fraction),
                  "test": int(rng.uniform() < config.test_fraction)}
        for split, n in counts.items():
            for _ in range(n):
                year = int(rng.integers(2016, 2022)) if split == "train" else (2022 if split == "val" else 2023)
                images = int(min(config.max_images, 1 + rng.poisson(config.mean_extra_images)))
                observations.append(dict(split=split, observationID=next_id, species=sp, images=images,
                                         specimen=make_specimen(rng, sp), metadata=_metadata(rng, sp, year),
                                         seed=int(rng.integers(2 ** 31))))
                next_id += int(rng.integers(1, 50))
    return observations


def write_species_set(out_dir, config: SpeciesSetConfig = SpeciesSetConfig(), show_progress: bool = True) -> dict:
    """Renders the set into `out_dir` (Kaggle layout). Returns counts per split."""
    out = epath.Path(out_dir)
    species = make_species(config)
    observations = plan_observations(config, species)
    rows = {s: [] for s in CSV_FILES}
    for split in CSV_FILES:
        (out / IMAGE_DIR / split / "300p").mkdir(parents=True, exist_ok=True)
    (out / CSV_DIR).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for obs in tqdm(observations, desc="synthetic observations", disable=not show_progress, mininterval=5):
        sp = obs["species"]
        view_rng = np.random.default_rng(obs["seed"])
        background = BACKGROUNDS[obs["metadata"]["habitat"] or HABITATS[0]]
        for k in range(obs["images"]):
            image = render_view(obs["specimen"], view_rng, config.image_size, background)
            filename = f"{obs['split']}-{obs['observationID']}-{k}.JPG"
            with (out / IMAGE_DIR / obs["split"] / "300p" / filename).open("wb") as f:
                Image.fromarray(image).save(f, format="JPEG", quality=92)
            rows[obs["split"]].append(dict(
                filename=filename, observationID=obs["observationID"], category_id=sp["category_id"],
                kingdom="Fungi", phylum="Basidiomycota", **{"class": "Agaricomycetes"}, order="Agaricales",
                family=sp["family"], genus=sp["genus"], specificEpithet=sp["epithet"], species=sp["name"],
                scientificName=sp["name"], iucnRedListCategory="LC", poisonous=sp["poisonous"], **obs["metadata"]))
    for split, split_rows in rows.items():
        with (out / CSV_DIR / CSV_FILES[split]).open("w") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(split_rows)
    counts = {s: dict(images=len(r), observations=len({x["observationID"] for x in r}),
                      species=len({x["category_id"] for x in r})) for s, r in rows.items()}
    counts["seconds"] = round(time.perf_counter() - start, 1)
    return counts


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("synth", help="render the synthetic few-shot species set (Kaggle layout)")
    p.add_argument("--out", required=True, help="folder to write (metadata/ and images/ under it)")
    p.add_argument("--species", type=int, default=300)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="data seed (keep apart from training seeds)")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    out = epath.Path(args.out)
    if (out / CSV_DIR / CSV_FILES["test"]).exists():
        print(f"{out}: synthetic species set already there; delete it to render again")
        return 0
    counts = write_species_set(out, SpeciesSetConfig(num_species=args.species, image_size=args.size, seed=args.seed))
    print(f"wrote {out}: " + "; ".join(f"{s} {c['observations']} observations / {c['images']} images / "
                                       f"{c['species']} species" for s, c in counts.items() if s in CSV_FILES)
          + f" ({counts['seconds']} s)")
    return 0
