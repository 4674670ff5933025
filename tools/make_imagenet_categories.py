#!/usr/bin/env python
"""Generate ``src/contentiqa/resources/imagenet_categories.csv``: ImageNet-1k class -> IQA-CR category.

Why: IQA-CR's authors pre-labelled KonIQ-10k's content with an ImageNet classifier and then had
people correct it. We do the same for datasets without content labels
(:mod:`contentiqa.data.content_labels`), and that needs every one of the 1000 classes assigned
to one of the ten IQA-CR categories. The assignment is derived from the WordNet noun hierarchy
that ImageNet's classes are synsets of, so it is principled and reproducible, then corrected by
a short list of explicit per-class overrides (each with its reason) where the WordNet parent
says what the *object* is but not what a *photo* predicted as that class shows.

How a class is assigned (first match wins):

1. ``RULES``: the first ancestor synset (``@`` hypernym or ``@i`` instance hypernym, transitively)
   in this ordered list decides. E.g. classes 0-397 are exactly the ``animal.n.01`` subtree
   (checked below) -> animal; ``conveyance.n.03`` (cars, trucks, boats, aircraft, trains,
   bicycles, sleds ...) -> vehicle; ``structure.n.01`` (buildings, bridges, fences, towers) ->
   cityscape; ``furniture.n.01`` -> indoor scene; ``clothing.n.01`` -> human; anything else under
   ``artifact.n.01`` (instruments, tools, devices, containers) and prepared food -> artifact.
2. ``OVERRIDES``: per-index corrections, applied after the rules, with the reason written in the
   ``rule`` column of the CSV.
3. A class matching no rule and no override is ``others`` (only "bubble" today).

Deliberate choices: footwear, bags and other accessories stay ``artifact`` (their ImageNet
photos are mostly product shots, not portraits); fruit, vegetables and fungi are ``plant``
while prepared dishes and drinks are ``artifact``.

"night scene" has no ImageNet class: it comes from a luminance cue in content_labels.

The WordNet 3.0 noun database (``data.noun`` and ``index.noun``) is read directly, no NLTK
needed. It is looked for in ``--wordnet-dir``, ``$WORDNET_DIR``, ``$WNHOME/dict``,
``/usr/share/wordnet`` (Debian/Ubuntu: ``apt-get install wordnet-base``) and NLTK's
``nltk_data/corpora/wordnet``. Class names and synset ids come from timm's offline label files.

Usage::

    python tools/make_imagenet_categories.py            # (re)write the CSV
    python tools/make_imagenet_categories.py --check    # exit 1 if the committed CSV differs
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from functools import lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT = REPO_ROOT / "src" / "contentiqa" / "resources" / "imagenet_categories.csv"

CATEGORIES = (
    "animal", "artifact", "cityscape", "human", "indoor scene",
    "landscape", "night scene", "plant", "vehicle", "others",
)

# Ordered (ancestor synset, category). More specific or higher-priority subtrees come first:
# e.g. a mobile home is both a conveyance and a structure; people before everything.
RULES: list[tuple[str, str]] = [
    ("animal.n.01", "animal"),                    # fish, birds, reptiles, invertebrates, mammals, dogs, cats
    ("person.n.01", "human"),                     # ballplayer, groom, scuba diver
    ("geological_formation.n.01", "landscape"),   # alp, cliff, coral reef, geyser, lakeside, valley, volcano ...
    ("plant.n.02", "plant"),                      # daisy, yellow lady's slipper
    ("fungus.n.01", "plant"),                     # agaric, bolete, earthstar ... (IQA-CR counts fungi as plants)
    ("plant_part.n.01", "plant"),                 # rapeseed, corn, acorn, hip, buckeye, ear
    ("produce.n.01", "plant"),                    # vegetables and fruit: broccoli, strawberry, banana ...
    ("conveyance.n.03", "vehicle"),               # cars, trucks, buses, boats, aircraft, trains, bicycles, sleds
    ("clothing.n.01", "human"),                   # suit, jersey, gown, hats, helmets: worn, so photos show people
    ("body_armor.n.01", "human"),                 # bulletproof vest, chain mail, cuirass
    ("mask.n.04", "human"),                       # gas mask, ski mask
    ("cosmetic.n.01", "human"),                   # lipstick, face powder
    ("jewelry.n.01", "human"),                    # necklace
    ("spectacles.n.01", "human"),                 # sunglasses
    ("white_goods.n.01", "indoor scene"),         # dishwasher, refrigerator, washer: only found in rooms
    ("furniture.n.01", "indoor scene"),           # dining table, bookcase, wardrobe, studio couch, desk ...
    ("furnishing.n.02", "indoor scene"),          # curtains, rugs
    ("mercantile_establishment.n.01", "indoor scene"),  # bakery, barbershop, bookshop, toyshop ... (shop interiors)
    ("structure.n.01", "cityscape"),              # church, mosque, palace, castle, bridges, fences, triumphal arch
    ("roof.n.01", "cityscape"),                   # dome, thatch, tile roof: buildings seen from outside
    ("sign.n.02", "cityscape"),                   # street sign
    ("visual_signal.n.01", "cityscape"),          # traffic light
    ("food.n.01", "artifact"),                    # prepared dishes and drinks: pizza, burrito, espresso ...
    ("food.n.02", "artifact"),                    # bread, bagel, pretzel
    ("artifact.n.01", "artifact"),                # everything else man-made: instruments, tools, devices, containers
]

# index: (category, reason). Kept short and explicit; the reason lands in the CSV's rule column.
OVERRIDES: dict[int, tuple[str, str]] = {
    # Parts and views of vehicles: a photo predicted as these shows a car, ship or aircraft.
    475: ("vehicle", "car mirror: part of a car"),
    479: ("vehicle", "car wheel: part of a car"),
    535: ("vehicle", "disk brake: part of a car/motorbike"),
    581: ("vehicle", "grille: ImageNet's images are car radiator grilles"),
    595: ("vehicle", "harvester: self-propelled farm machine"),
    685: ("vehicle", "odometer: car dashboard"),
    694: ("vehicle", "paddlewheel: paddle steamer"),
    744: ("vehicle", "projectile, missile: rockets, as missile (657) is under vehicle"),
    785: ("vehicle", "seat belt: car interior"),
    856: ("vehicle", "thresher: farm machine in the field, like the harvester"),
    908: ("vehicle", "wing: aircraft wing seen from the cabin"),
    # Conveyances that are hand-pushed objects or not vehicles in a photo.
    417: ("artifact", "balloon: ImageNet's images are mostly toy/party balloons"),
    428: ("artifact", "barrow: wheelbarrow, a garden tool"),
    791: ("artifact", "shopping cart: an object, not a vehicle"),
    830: ("artifact", "stretcher: medical equipment"),
    660: ("cityscape", "mobile home: housing in a trailer park"),
    # Outdoor street furniture and large outdoor structures not under structure.n.01.
    442: ("cityscape", "bell cote: part of a church roof"),
    476: ("cityscape", "carousel: fairground ride, outdoors"),
    517: ("cityscape", "crane: construction crane over buildings"),
    540: ("cityscape", "drilling platform: offshore structure"),
    557: ("cityscape", "flagpole: flags over buildings"),
    571: ("cityscape", "gas pump: petrol station"),
    637: ("cityscape", "mailbox: street/roadside furniture"),
    640: ("cityscape", "manhole cover: street surface"),
    703: ("cityscape", "park bench: outdoor street furniture"),
    704: ("cityscape", "parking meter: street furniture"),
    707: ("cityscape", "pay-phone: street furniture"),
    718: ("cityscape", "pier: built structure on the waterfront"),
    733: ("cityscape", "pole: utility/telegraph poles"),
    755: ("cityscape", "radio telescope: large outdoor structure"),
    807: ("cityscape", "solar dish: large outdoor structure"),
    900: ("cityscape", "water tower: structure (WordNet files it under vessel)"),
    # Natural settings dominate these photos.
    500: ("landscape", "cliff dwelling: ruins in a cliff face"),
    646: ("landscape", "maze: hedge/corn mazes photographed in gardens and fields"),
    649: ("landscape", "megalith: standing stones in open country"),
    672: ("landscape", "mountain tent: tents pitched in the wild"),
    958: ("landscape", "hay: hay bales in fields"),
    # Rooms and interiors.
    406: ("indoor scene", "altar: church interior"),
    421: ("indoor scene", "bannister: staircase inside a house"),
    435: ("indoor scene", "bathtub: bathroom"),
    556: ("indoor scene", "fire screen: fireplace in a room"),
    598: ("indoor scene", "home theater: living room"),
    619: ("indoor scene", "lampshade: room lighting"),
    624: ("indoor scene", "library: reading room interior"),
    651: ("indoor scene", "microwave: kitchen"),
    669: ("indoor scene", "mosquito net: bedroom"),
    687: ("indoor scene", "organ: pipe organ inside a church/hall"),
    729: ("indoor scene", "plate rack: kitchen"),
    750: ("indoor scene", "quilt: bed in a bedroom"),
    753: ("indoor scene", "radiator: room heating"),
    762: ("indoor scene", "restaurant: dining room interior"),
    789: ("indoor scene", "shoji: Japanese room partition"),
    799: ("indoor scene", "sliding door: doors inside houses"),
    819: ("indoor scene", "stage: concert/theatre stage"),
    827: ("indoor scene", "stove: kitchen"),
    884: ("indoor scene", "vault: arched ceiling seen from inside"),
    896: ("indoor scene", "washbasin: bathroom"),
    904: ("indoor scene", "window screen: seen from inside"),
    905: ("indoor scene", "window shade: seen from inside"),
    # Worn by, or only seen on, people.
    443: ("human", "bib: worn by babies"),
    461: ("human", "breastplate: body armour (WordNet: armor plate)"),
    678: ("human", "neck brace: worn"),
    691: ("human", "oxygen mask: worn"),
    715: ("human", "pickelhaube: helmet (WordNet: armor)"),
    801: ("human", "snorkel: worn by swimmers"),
    501: ("human", "cloak: worn (WordNet: overgarment under covering, not clothing)"),
    836: ("human", "sunglass: ImageNet's images are sunglasses, like class 837"),
    # Clothing-tree items photographed as objects.
    496: ("artifact", "Christmas stocking: a decoration"),
    # Plants in pots; natural things that are not plants.
    738: ("plant", "pot, flowerpot: potted plants"),
    599: ("animal", "honeycomb: bee comb, usually with bees (WordNet: structure)"),
    815: ("animal", "spider web: spiders' webs, often with the spider (WordNet: trap)"),
    # Man-made things outside artifact.n.01, and objects wrongly caught by a broader rule.
    458: ("artifact", "brass: memorial plaque (WordNet: structure)"),
    506: ("artifact", "coil: a spiral object (WordNet: structure)"),
    708: ("artifact", "pedestal: statue base (WordNet: structure)"),
    935: ("artifact", "mashed potato: a food dish (WordNet: vegetable)"),
    999: ("artifact", "toilet tissue: paper roll (WordNet: material)"),
    916: ("others", "web site: screenshots, not a photographed scene"),
}

_DEFAULT_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/local/WordNet-3.0/dict")


def find_wordnet(explicit: str | None) -> Path:
    """The folder holding WordNet 3.0's ``data.noun`` and ``index.noun``."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("WORDNET_DIR"):
        candidates.append(Path(os.environ["WORDNET_DIR"]))
    if os.environ.get("WNHOME"):
        candidates.append(Path(os.environ["WNHOME"]) / "dict")
    candidates += [Path(d) for d in _DEFAULT_DIRS]
    nltk_roots = [os.environ.get("NLTK_DATA", ""), str(Path.home() / "nltk_data"), "/usr/share/nltk_data"]
    candidates += [Path(r) / "corpora" / "wordnet" for r in nltk_roots if r]
    for c in candidates:
        if (c / "data.noun").is_file() and (c / "index.noun").is_file():
            return c
    raise SystemExit(
        "WordNet 3.0 noun database not found (looked in: "
        + ", ".join(str(c) for c in candidates)
        + "). Install it (Debian/Ubuntu: apt-get install wordnet-base) or pass --wordnet-dir."
    )


class WordNetNouns:
    """Just enough of WordNet's noun database: synset words, hypernyms and NLTK-style names."""

    def __init__(self, folder: Path):
        self.words: dict[str, list[str]] = {}
        self.hypernyms: dict[str, list[str]] = {}
        with open(folder / "data.noun", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                fields = line.partition(" | ")[0].split()
                offset, n_words = fields[0], int(fields[3], 16)
                self.words[offset] = [fields[4 + 2 * i] for i in range(n_words)]
                i = 4 + 2 * n_words
                n_ptr = int(fields[i])
                i += 1
                hyps = []
                for _ in range(n_ptr):
                    symbol, target, pos = fields[i], fields[i + 1], fields[i + 2]
                    i += 4
                    if symbol in ("@", "@i") and pos == "n":
                        hyps.append(target)
                self.hypernyms[offset] = hyps
        self._sense: dict[tuple[str, str], int] = {}
        with open(folder / "index.noun", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                fields = line.split()
                lemma, n_ptr = fields[0], int(fields[3])
                for sense, offset in enumerate(fields[6 + n_ptr:], start=1):
                    self._sense[(lemma, offset)] = sense
        self._by_name = {}
        for offset in self.words:
            self._by_name.setdefault(self.name(offset), offset)

    def name(self, offset: str) -> str:
        """``sports_car.n.01`` style name (first lemma, its sense number), as NLTK prints it."""
        lemma = self.words[offset][0].lower()
        return f"{lemma}.n.{self._sense.get((lemma, offset), 0):02d}"

    def offset(self, name: str) -> str:
        if name not in self._by_name:
            raise KeyError(f"WordNet has no noun synset named {name!r}")
        return self._by_name[name]

    @lru_cache(maxsize=None)
    def ancestors(self, offset: str) -> frozenset[str]:
        """The synset itself and all its (instance) hypernyms, transitively."""
        out = {offset}
        for h in self.hypernyms.get(offset, ()):
            out |= self.ancestors(h)
        return frozenset(out)


def build_rows(wn: WordNetNouns) -> list[dict[str, str]]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    synsets = list(info.label_names())
    if len(synsets) != 1000:
        raise SystemExit(f"timm lists {len(synsets)} ImageNet-1k classes, expected 1000")
    rules = [(wn.offset(root), root, cat) for root, cat in RULES]
    rows = []
    for index, synset in enumerate(synsets):
        offset = synset[1:]
        if offset not in wn.words:
            raise SystemExit(f"class {index} {synset} is not in this WordNet (need version 3.0)")
        anc = wn.ancestors(offset)
        category, rule = "others", "no rule matched"
        for root_offset, root_name, cat in rules:
            if root_offset in anc:
                category, rule = cat, f"wordnet:{root_name}"
                break
        if index in OVERRIDES:
            new_cat, reason = OVERRIDES[index]
            if new_cat == category:
                raise SystemExit(f"override for {index} ({reason}) changes nothing; remove it")
            category, rule = new_cat, f"override ({rule}): {reason}"
        name = info.index_to_description(index).split(",")[0].strip()
        rows.append({"index": str(index), "synset": synset, "name": name, "category": category, "rule": rule})
    _sanity_check(rows, wn, synsets)
    return rows


def _sanity_check(rows: list[dict[str, str]], wn: WordNetNouns, synsets: list[str]) -> None:
    """The facts the mapping is built on; a different WordNet or label file fails loudly."""
    animal = wn.offset("animal.n.01")
    in_animal = [i for i, s in enumerate(synsets) if animal in wn.ancestors(s[1:])]
    if in_animal != list(range(398)):
        raise SystemExit("expected exactly classes 0-397 under animal.n.01")
    bad = [r for r in rows if r["category"] not in CATEGORIES or r["category"] == "night scene"]
    if bad:
        raise SystemExit(f"invalid categories: {bad[:3]}")


def render(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["index", "synset", "name", "category", "rule"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", help="folder with WordNet 3.0 data.noun / index.noun")
    parser.add_argument("--out", default=str(OUTPUT), help=f"output CSV (default {OUTPUT.relative_to(REPO_ROOT)})")
    parser.add_argument("--check", action="store_true", help="compare with the existing file instead of writing")
    args = parser.parse_args(argv)

    rows = build_rows(WordNetNouns(find_wordnet(args.wordnet_dir)))
    text = render(rows)
    out = Path(args.out)
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print(f"{out}: {'up to date' if same else 'DIFFERS from the rules'}")
        return 0 if same else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    print(f"wrote {out} ({len(rows)} classes, {len(OVERRIDES)} overrides)")
    for cat in CATEGORIES:
        print(f"  {cat:13s} {counts.get(cat, 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
