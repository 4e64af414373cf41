"""The embedded default dataset `synthetic`, written in the official Amazon 2014 raw formats.

Deterministic from the seed. What it imitates (docs/design.md, "Synthetic data"):
- a category tree of depth 3 under one root ("Synthetic Store > domain > aisle > shelf"), shelves
  named from per-domain vocabulary; ~4% of items stop at depth 2, ~1% carry a second path;
- titles built from the shelf noun, domain adjectives, a brand from the domain's brand list and a
  model number; ~5% of items have no title, ~30% no brand, half have a price;
- power-law (Zipf) item popularity;
- users with interests in 1-3 domains, and sequential regularities: each item has a few
  "successor" items (same shelf or a complementary shelf); the next purchase follows a successor,
  stays in the aisle, or restarts from the user's interests;
- day-granularity timestamps with same-day ties (~20% of gaps are zero days).
A sequential model can learn the successor structure that item popularity cannot see.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..progress import progress
from ..utils import atomic_path, log
from .amazon import file_names

ROOT = "Synthetic Store"

DOMAINS: dict[str, dict[str, list[str]]] = {
    "Skin Care": {
        "aisles": ["Face", "Body", "Eyes", "Sun Care", "Lips", "Hands & Nails"],
        "nouns": ["serum", "cream", "cleanser", "toner", "mask", "lotion", "scrub", "balm", "oil", "mist"],
        "adjs": ["hydrating", "gentle", "soothing", "brightening", "firming", "oil-free", "fragrance-free"],
    },
    "Hair Care": {
        "aisles": ["Shampoo & Conditioner", "Styling", "Treatments", "Coloring", "Tools", "Accessories"],
        "nouns": ["shampoo", "conditioner", "gel", "spray", "mousse", "dye", "brush", "clip", "dryer", "comb"],
        "adjs": ["volumizing", "smoothing", "repairing", "curl-defining", "color-safe", "strengthening"],
    },
    "Kitchen": {
        "aisles": ["Cookware", "Bakeware", "Utensils", "Cutlery", "Storage", "Small Appliances"],
        "nouns": ["skillet", "saucepan", "baking sheet", "spatula", "knife", "container", "blender", "whisk", "grater", "kettle"],
        "adjs": ["nonstick", "stainless", "cast-iron", "dishwasher-safe", "heavy-duty", "compact"],
    },
    "Camping": {
        "aisles": ["Tents", "Sleeping", "Cooking", "Lighting", "Backpacks", "Navigation"],
        "nouns": ["tent", "sleeping bag", "stove", "lantern", "headlamp", "backpack", "compass", "tarp", "mat", "cooler"],
        "adjs": ["ultralight", "waterproof", "insulated", "rugged", "packable", "weatherproof"],
    },
    "Fitness": {
        "aisles": ["Strength", "Cardio", "Yoga", "Recovery", "Accessories", "Nutrition"],
        "nouns": ["dumbbell", "kettlebell", "jump rope", "yoga mat", "foam roller", "resistance band", "gloves", "shaker", "bench", "protein powder"],
        "adjs": ["adjustable", "non-slip", "high-density", "ergonomic", "portable", "durable"],
    },
    "Toys": {
        "aisles": ["Building", "Puzzles", "Dolls", "Vehicles", "Games", "Learning"],
        "nouns": ["building set", "puzzle", "doll", "race car", "board game", "card game", "robot kit", "train set", "plush", "flash cards"],
        "adjs": ["educational", "colorful", "wooden", "remote-control", "kid-friendly", "collectible"],
    },
    "Music": {
        "aisles": ["Rock", "Jazz", "Classical", "Pop", "Hip-Hop", "Country"],
        "nouns": ["album", "live recording", "greatest hits", "box set", "single", "soundtrack", "remaster", "EP", "anthology", "vinyl"],
        "adjs": ["deluxe", "remastered", "limited", "acoustic", "expanded", "original"],
    },
    "Garden": {
        "aisles": ["Planters", "Watering", "Tools", "Seeds", "Lighting", "Pest Control"],
        "nouns": ["planter", "hose", "sprinkler", "trowel", "pruner", "seed pack", "solar light", "trap", "rake", "gloves"],
        "adjs": ["weather-resistant", "organic", "heavy-duty", "self-watering", "solar-powered", "ergonomic"],
    },
}

_SYLLABLES = ["ka", "lo", "ve", "ri", "tan", "mo", "zu", "el", "bra", "ni", "sol", "qu", "dar", "en", "fi", "ox"]


@dataclass
class SyntheticSize:
    n_users: int
    n_items: int
    mean_len: float  # mean interactions per user before the k-core filter
    domains: int
    aisles: int  # aisles per domain
    shelves: int  # shelves (leaf categories) per aisle


SIZES = {
    "tiny": SyntheticSize(n_users=400, n_items=250, mean_len=9.0, domains=4, aisles=3, shelves=3),
    "small": SyntheticSize(n_users=1500, n_items=750, mean_len=9.5, domains=6, aisles=4, shelves=4),
    "cds": SyntheticSize(n_users=78000, n_items=70000, mean_len=14.8, domains=8, aisles=6, shelves=6),
}


@contextlib.contextmanager
def _gzip_text(path: Path):
    """A gzip text writer with mtime 0, so the same seed gives byte-identical files."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=5, mtime=0) as gz:
        with io.TextIOWrapper(gz, encoding="utf-8") as fh:
            yield fh


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(_SYLLABLES, size=n)).capitalize()


def _cdf_pick(rng_u: float, items: np.ndarray, cdf: np.ndarray) -> int:
    return int(items[min(np.searchsorted(cdf, rng_u * cdf[-1], side="right"), len(items) - 1)])


def generate(out_dir: str | Path, size: str | SyntheticSize = "small", seed: int = 42) -> tuple[Path, Path]:
    """Write `reviews_Synthetic_5.json.gz` and `meta_Synthetic.json.gz` into `out_dir`."""
    spec = SIZES[size] if isinstance(size, str) else size
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # ---- category tree: domain > aisle > shelf; shelf noun drives titles
    dom_names = list(DOMAINS)[: spec.domains]
    shelves = []  # (domain idx, aisle idx (global), noun, path)
    aisle_of_domain: list[list[int]] = []
    n_aisles = 0
    for d, dname in enumerate(dom_names):
        spec_d = DOMAINS[dname]
        aisle_of_domain.append([])
        for a in rng.choice(len(spec_d["aisles"]), size=spec.aisles, replace=False):
            aname = spec_d["aisles"][a]
            for noun in rng.choice(spec_d["nouns"], size=spec.shelves, replace=False):
                shelves.append((d, n_aisles, str(noun), [ROOT, dname, aname, _plural(str(noun).title())]))
            aisle_of_domain[d].append(n_aisles)
            n_aisles += 1
    n_shelves = len(shelves)
    brands = [[_word(rng, int(rng.integers(2, 4))) for _ in range(12)] for _ in dom_names]
    # each shelf has a complementary shelf in the same domain (shampoo -> conditioner)
    complement = np.array([
        rng.choice([j for j, s in enumerate(shelves) if s[0] == shelves[i][0] and j != i])
        for i in range(n_shelves)
    ])

    # ---- items: shelf, power-law popularity, metadata
    shelf_w = rng.dirichlet(np.full(n_shelves, 2.0))
    item_shelf = rng.choice(n_shelves, size=spec.n_items, p=shelf_w)
    pop = 1.0 / np.arange(1, spec.n_items + 1) ** 0.9
    pop = pop[rng.permutation(spec.n_items)]
    item_dom = np.array([shelves[s][0] for s in item_shelf])
    item_aisle = np.array([shelves[s][1] for s in item_shelf])
    asins = np.array(sorted({f"S{v:09d}" for v in rng.choice(10**9, size=spec.n_items * 2, replace=False)})[: spec.n_items])
    asins = asins[rng.permutation(spec.n_items)]

    def group_index(keys: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for k in range(n):
            members = np.flatnonzero(keys == k)
            out.append((members, np.cumsum(pop[members]) if len(members) else np.zeros(0)))
        return out

    by_dom = group_index(item_dom, len(dom_names))
    by_aisle = group_index(item_aisle, n_aisles)
    by_shelf = group_index(item_shelf, n_shelves)

    # successors: 4 items from the same shelf or its complement, weighted by popularity
    n_succ = 4
    succ = np.zeros((spec.n_items, n_succ), dtype=np.int64)
    for i in range(spec.n_items):
        s = item_shelf[i] if rng.random() < 0.5 else complement[item_shelf[i]]
        members, cdf = by_shelf[s] if len(by_shelf[s][0]) else by_dom[item_dom[i]]
        succ[i] = [_cdf_pick(u, members, cdf) for u in rng.random(n_succ)]
    succ_cdf = np.cumsum([0.4, 0.3, 0.2, 0.1])

    # ---- users and their sequences
    n_int_total = 0
    users = [f"U{v:012d}" for v in rng.choice(10**12, size=spec.n_users, replace=False)]
    day0 = dt.date(2010, 1, 1).toordinal()
    rows: list[tuple[str, str, int]] = []
    for u in progress(range(spec.n_users), desc="synthetic users", leave=False):
        k_dom = int(rng.integers(1, 4))
        doms = rng.choice(len(dom_names), size=k_dom, replace=False)
        dom_w = np.cumsum(rng.dirichlet(np.ones(k_dom)))
        length = 5 + int(rng.geometric(1.0 / max(spec.mean_len - 4.0, 1.01))) - 1
        day = day0 + int(rng.integers(0, 1600))
        draws = rng.random((length * 6, 3))
        seen: set[int] = set()
        seq: list[int] = []
        prev = -1
        t = 0
        while len(seq) < length and t < len(draws):
            r_mode, r_a, r_b = draws[t]
            t += 1
            if prev >= 0 and r_mode < 0.45:
                item = int(succ[prev, np.searchsorted(succ_cdf, r_a)])
            elif prev >= 0 and r_mode < 0.65:
                members, cdf = by_aisle[item_aisle[prev]]
                item = _cdf_pick(r_a, members, cdf)
            else:
                d = doms[min(np.searchsorted(dom_w, r_a), k_dom - 1)]
                members, cdf = by_dom[d]
                if not len(members):
                    continue
                item = _cdf_pick(r_b, members, cdf)
            if item in seen:
                continue
            seen.add(item)
            seq.append(item)
            prev = item
        for item in seq:
            gap = 0 if rng.random() < 0.2 else int(rng.geometric(1 / 25))
            day += gap
            rows.append((users[u], asins[item], day))
        n_int_total += len(seq)

    # ---- write, sorted by asin like the official files
    rows.sort(key=lambda r: (r[1], r[0]))
    reviews_name, meta_name = file_names("synthetic")
    reviews_path, meta_path = out_dir / reviews_name, out_dir / meta_name
    with atomic_path(reviews_path) as tmp, _gzip_text(tmp) as fh:
        for user, asin, day in rows:
            date = dt.date.fromordinal(day)
            fh.write(json.dumps({
                "reviewerID": user, "asin": asin,
                "overall": float(1 + day % 5),  # a field beyond the required ones, as in the originals
                "unixReviewTime": int((day - dt.date(1970, 1, 1).toordinal()) * 86400),
                "reviewTime": f"{date.month:02d} {date.day}, {date.year}",
            }) + "\n")

    meta_rng = np.random.default_rng(seed + 1)
    with atomic_path(meta_path) as tmp, _gzip_text(tmp) as fh:
        for i in np.argsort(asins):
            d, _, noun, path = shelves[item_shelf[i]]
            dname = dom_names[d]
            r = meta_rng.random(6)
            brand = brands[d][int(meta_rng.integers(0, len(brands[d])))]
            adj = DOMAINS[dname]["adjs"][int(meta_rng.integers(0, len(DOMAINS[dname]["adjs"])))]
            rec: dict = {"asin": str(asins[i])}
            if r[0] >= 0.05:
                rec["title"] = f"{brand} {adj.title()} {noun.title()} {path[2]} {_word(meta_rng, 1).upper()}-{int(meta_rng.integers(10, 999))}"
            cats = [path if r[1] >= 0.04 else path[:3]]
            if r[2] < 0.01:  # a second path, under another root (as real data has)
                cats.append(["Gift Ideas", dname])
            rec["categories"] = cats
            if r[3] >= 0.3:
                rec["brand"] = brand
            if r[4] < 0.5:
                rec["price"] = round(float(meta_rng.uniform(3, 120)), 2)
            if r[5] < 0.2:
                rec["description"] = f"A {adj} {noun} for {path[2].lower()}, part of our {dname.lower()} range."
            fh.write(repr(rec) + "\n")
    log.info("synthetic (%s): %d users, %d items, %d interactions -> %s",
             size if isinstance(size, str) else "custom", spec.n_users, spec.n_items, n_int_total, out_dir)
    return reviews_path, meta_path


# ------------------------------------------------------------------------------- catalogues of any size


def _groups(keys: np.ndarray, n_groups: int, w: np.ndarray):
    """Items grouped by `keys` for popularity-weighted draws within a group: (order, cumulative weight in
    that order, group start, group end, weight before the group, group total)."""
    order = np.argsort(keys, kind="stable")
    cum = np.cumsum(w[order])
    end = np.cumsum(np.bincount(keys, minlength=n_groups))
    start = end - np.bincount(keys, minlength=n_groups)
    base = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
    total = np.where(end > start, cum[np.maximum(end - 1, 0)] - base, 0.0)
    return order, cum, start, end, base, total


def _pick(g, group: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One popularity-weighted item per row from group `group[r]` (groups must be non-empty)."""
    order, cum, start, end, base, total = g
    j = np.searchsorted(cum, base[group] + u * total[group], side="right")
    return order[np.clip(j, start[group], end[group] - 1)]


def generate_table(out_dir: str | Path, n_items: int, seed: int = 42, users_per_item: float = 1.5,
                   mean_len: float = 10.0, popularity_floor: float = 0.7) -> tuple[Path, Path]:
    """A catalogue of any size (issue 35), vectorised (a Python loop per sequence step, never per user or item),
    written as your own data: `interactions.parquet` (user_id, item_id, timestamp) and `items.parquet`
    (item_id, title, brand, price, description, categories) for `dataset: custom`.

    The structure of `generate`: a tree domain > aisle > shelf (8 x 6 x 10 leaves) with per-domain words,
    titles from brand, adjective, shelf noun, aisle and a model number (~5% without a title, ~30% without a
    brand); popularity Zipf(0.9) mixed with a uniform share `popularity_floor`, so that most of a large
    catalogue survives the 5-core filter with Amazon-like ratios (20k items: 94% kept, 1.45 users and 15
    interactions per item, 9.7 per user; Beauty: 1.8 and 16.4, 8.9); users with 1-3 domains whose next item
    follows a successor of the previous one (45%), stays in its aisle (20%) or restarts from their domains
    (35%); day timestamps with 20% same-day ties. Same seed, same files."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dom_names = list(DOMAINS)
    leaves = [(d, d * 6 + a, noun, f"{dn} > {aisle} > {_plural(noun.title())}")
              for d, dn in enumerate(dom_names) for a, aisle in enumerate(DOMAINS[dn]["aisles"])
              for noun in DOMAINS[dn]["nouns"]]
    n_shelves, n_aisles, n_doms = len(leaves), 6 * len(dom_names), len(dom_names)
    shelf_dom = np.array([s[0] for s in leaves])
    shelf_aisle = np.array([s[1] for s in leaves])
    # a complementary shelf in the same domain: the next shelf of the domain, cyclically shifted by 1..59
    per_dom = n_shelves // n_doms
    shift = rng.integers(1, per_dom, size=n_shelves)
    complement = shelf_dom * per_dom + (np.arange(n_shelves) % per_dom + shift) % per_dom

    item_shelf = rng.choice(n_shelves, size=n_items, p=rng.dirichlet(np.full(n_shelves, 2.0)))
    zipf = 1.0 / np.arange(1, n_items + 1) ** 0.9
    w = (1 - popularity_floor) * zipf[rng.permutation(n_items)] / zipf.sum() + popularity_floor / n_items
    item_dom, item_aisle = shelf_dom[item_shelf], shelf_aisle[item_shelf]
    by_dom = _groups(item_dom, n_doms, w)
    by_aisle = _groups(item_aisle, n_aisles, w)
    by_shelf = _groups(item_shelf, n_shelves, w)

    # successors: 4 per item from its shelf or the complementary shelf (its own where that one is empty)
    n_succ = 4
    src = np.repeat(np.arange(n_items), n_succ)
    shelf = np.where(rng.random(len(src)) < 0.5, item_shelf[src], complement[item_shelf[src]])
    shelf = np.where(by_shelf[3][shelf] > by_shelf[2][shelf], shelf, item_shelf[src])  # an empty one: its own
    succ = _pick(by_shelf, shelf, rng.random(len(src))).reshape(n_items, n_succ)
    succ_cdf = np.cumsum([0.4, 0.3, 0.2, 0.1])

    # users: domains of interest and sequence lengths; then every user's t-th item at once
    n_users = max(int(n_items * users_per_item), 1)
    lengths = 5 + rng.geometric(1.0 / max(mean_len - 4.0, 1.01), size=n_users) - 1
    doms = np.argsort(rng.random((n_users, n_doms)), axis=1)[:, :3]
    k_dom = rng.integers(1, 4, size=n_users)
    dw = rng.exponential(size=(n_users, 3)) * (np.arange(3)[None] < k_dom[:, None])
    dw = np.cumsum(dw / dw.sum(1, keepdims=True), axis=1)
    offset = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    seq = np.empty(int(lengths.sum()), dtype=np.int64)
    prev = np.full(n_users, -1)
    for t in range(int(lengths.max())):
        act = np.flatnonzero(lengths > t)
        r = rng.random((len(act), 3))
        p = prev[act]
        own = doms[act, np.minimum((r[:, 1:2] > dw[act]).sum(1), 2)]
        item = _pick(by_dom, own, r[:, 2])
        follow = (p >= 0) & (r[:, 0] < 0.45)
        item[follow] = succ[p[follow], np.searchsorted(succ_cdf, r[follow, 1])]
        aisle = (p >= 0) & (r[:, 0] >= 0.45) & (r[:, 0] < 0.65)
        item[aisle] = _pick(by_aisle, item_aisle[p[aisle]], r[aisle, 2])
        seq[offset[act] + t] = item
        prev[act] = item
    user = np.repeat(np.arange(n_users), lengths)
    gaps = np.where(rng.random(len(seq)) < 0.2, 0, rng.geometric(1 / 25, size=len(seq)))
    start_day = rng.integers(0, 1600, size=n_users)
    day = np.repeat(start_day, lengths) + np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[offset] - gaps[offset], lengths)
    day0 = dt.date(2010, 1, 1).toordinal() - dt.date(1970, 1, 1).toordinal()

    item_names = np.char.add("S", np.char.zfill(rng.choice(10**9, size=n_items, replace=False).astype(str), 9))
    user_names = np.char.add("U", np.char.zfill(rng.choice(10**12, size=n_users, replace=False).astype(str), 12))
    inter = pd.DataFrame({"user_id": pd.Categorical.from_codes(user, user_names),
                          "item_id": pd.Categorical.from_codes(seq, item_names),
                          "timestamp": ((day0 + day) * 86400).astype(np.int64)})

    # item metadata, vectorised over columns
    words = np.array([_word(rng, 1).upper() for _ in range(997)])
    brands = np.array([[_word(rng, int(rng.integers(2, 4))) for _ in range(12)] for _ in dom_names])
    adjs = [DOMAINS[d]["adjs"] for d in dom_names]
    r = rng.random((n_items, 4))
    brand = brands[item_dom, rng.integers(0, 12, size=n_items)]
    adj = np.array([a.title() for row in adjs for a in row] + [""])  # flat, per domain offset
    adj_off = np.concatenate([[0], np.cumsum([len(a) for a in adjs])[:-1]])
    adj_i = adj_off[item_dom] + (rng.integers(0, 1 << 30, size=n_items) % np.array([len(a) for a in adjs])[item_dom])
    nouns = np.array([s[2].title() for s in leaves])[item_shelf]
    aisles = np.array([DOMAINS[dom_names[s[0]]]["aisles"][s[1] % 6] for s in leaves])[item_shelf]
    model = pd.Series(words[rng.integers(0, len(words), size=n_items)]) + "-" + pd.Series(
        rng.integers(10, 999, size=n_items)).astype(str)
    title = (pd.Series(brand) + " " + adj[adj_i] + " " + nouns + " " + aisles + " " + model)
    items = pd.DataFrame({
        "item_id": item_names,
        "title": title.where(r[:, 0] >= 0.05, None),
        "brand": pd.Series(brand).where(r[:, 1] >= 0.3, None),
        "price": np.where(r[:, 2] < 0.5, np.round(rng.uniform(3, 120, size=n_items), 2), np.nan),
        "description": ("A " + pd.Series(adj[adj_i]).str.lower() + " " + pd.Series(nouns).str.lower() + " for "
                        + pd.Series(aisles).str.lower() + ".").where(r[:, 3] < 0.2, None),
        "categories": np.array([s[3] for s in leaves])[item_shelf],
    })
    from ..utils import write_parquet
    ipath, mpath = out_dir / "interactions.parquet", out_dir / "items.parquet"
    write_parquet(ipath, inter)
    write_parquet(mpath, items)
    log.info("synthetic table: %d users, %d items, %d interactions -> %s", n_users, n_items, len(inter), out_dir)
    return ipath, mpath
