"""Split protocols: determinism, disjointness, proportions, SI x MOS stratification, files."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.signal import convolve2d

from contentiqa.data import (
    Split,
    compute_si,
    load_splits,
    make_split_set,
    make_splits,
    save_splits,
    spatial_information,
)

from conftest import write_image

N_PER_CELL = 20  # 10 cells x 20 = 200 images


def synthetic_table(root="/data/set", n_per_cell: int = N_PER_CELL, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A table whose 10 SI x MOS cells are known by construction (no images are read).

    SI is low (0-10) or high (100-110); within each level, MOS falls in 5 disjoint bands, so
    the median SI split and the MOS quintiles within a level recover exactly ``cell``.
    """
    rng = np.random.default_rng(seed)
    rows, cell = [], []
    k = 0
    for level in (0, 1):
        for band in range(5):
            for _ in range(n_per_cell):
                rows.append({
                    "image": f"{root}/{'sub%d/' % (k % 3)}img{k:04d}.jpg",
                    "mos": band * 20 + rng.uniform(1, 19),
                    "si": level * 100 + rng.uniform(0, 10),
                })
                cell.append(level * 5 + band)
                k += 1
    order = rng.permutation(len(rows))  # rows not grouped by cell
    return pd.DataFrame(rows).iloc[order].reset_index(drop=True), np.asarray(cell)[order]


def _key(path: str, root: str = "/data/set") -> str:
    return path[len(root) + 1:]


@pytest.mark.parametrize("protocol", ["iqa-cr", "ie-iqa"])
def test_deterministic_per_seed(protocol):
    table, _ = synthetic_table()
    a = make_splits(table, protocol, seed=3)
    b = make_splits(table, protocol, seed=3)
    c = make_splits(table, protocol, seed=4)
    assert a.parts == b.parts
    assert a.parts["train"] != c.parts["train"]
    assert a.protocol == protocol and a.seed == 3


@pytest.mark.parametrize("protocol,parts,fractions", [
    ("iqa-cr", ("train", "val", "test"), (0.8, 0.1, 0.1)),
    ("ie-iqa", ("train", "test"), (0.8, 0.2)),
])
def test_disjoint_complete_and_sized(protocol, parts, fractions):
    table, _ = synthetic_table()
    n = len(table)
    for seed in range(3):
        s = make_splits(table, protocol, seed)
        assert {k for k, v in s.parts.items() if v} == set(parts)
        seen = [k for p in parts for k in s.parts[p]]
        assert len(seen) == len(set(seen)) == n  # no image twice, none left out
        assert set(seen) == {_key(p) for p in table["image"]}
        for p, f in zip(parts, fractions):
            assert abs(len(s.parts[p]) - f * n) <= 0.02 * n, (p, len(s.parts[p]))
        # Every key resolves to a row of the table.
        idx = np.concatenate([s.indices(table, p) for p in parts])
        assert sorted(idx.tolist()) == list(range(n))


def test_iqa_cr_every_cell_in_train_and_stratified():
    table, cell = synthetic_table()
    for seed in range(5):
        s = make_splits(table, "iqa-cr", seed)
        for part, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            cells = cell[s.indices(table, part)]
            counts = np.bincount(cells, minlength=10)
            assert (counts == round(share * N_PER_CELL)).all(), (part, counts)


def test_iqa_cr_small_cells_still_in_train():
    table, cell = synthetic_table(n_per_cell=3)
    s = make_splits(table, "iqa-cr", seed=0)
    assert set(cell[s.indices(table, "train")]) == set(range(10))


def test_ie_iqa_is_not_stratified_but_random():
    table, cell = synthetic_table()
    splits = [make_splits(table, "ie-iqa", seed) for seed in range(4)]
    assert all("val" not in s.parts or not s.parts["val"] for s in splits)
    assert len({tuple(s.parts["test"]) for s in splits}) == 4


def test_si_argument_and_column_agree():
    table, _ = synthetic_table()
    si = table["si"].to_numpy()
    a = make_splits(table, "iqa-cr", 1)
    b = make_splits(table.drop(columns="si"), "iqa-cr", 1, si=si)
    assert a.parts == b.parts
    with pytest.raises(ValueError, match="si has"):
        make_splits(table.drop(columns="si"), "iqa-cr", 1, si=si[:-1])
    sets = make_split_set(table, "iqa-cr", seeds=range(3), progress=False)
    assert [s.seed for s in sets] == [0, 1, 2]
    assert sets[1].parts == a.parts


def test_bad_arguments():
    table, _ = synthetic_table()
    with pytest.raises(ValueError, match="1 non-finite value"):  # the median was NaN: one complexity level
        make_splits(table.assign(si=table["si"].where(table.index != 3)), "iqa-cr", 0)
    with pytest.raises(ValueError, match="protocol"):
        make_splits(table, "kfold", 0)
    with pytest.raises(ValueError, match="at least 10"):
        make_splits(table.iloc[:5], "ie-iqa", 0)


def test_save_load_round_trip(tmp_path):
    table, _ = synthetic_table()
    splits = [make_splits(table, "iqa-cr", s) for s in range(3)]
    path = save_splits(splits, tmp_path / "sub" / "splits.json")
    assert json.loads(path.read_text())["format"] == "contentiqa-splits/1"
    back = load_splits(path)
    assert [s.to_dict() for s in back] == [s.to_dict() for s in splits]
    one = load_splits(save_splits(splits[0], tmp_path / "one.json"))
    assert len(one) == 1 and one[0].parts == splits[0].parts
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_splits(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "x"}')
    with pytest.raises(ValueError, match="not a contentiqa split"):
        load_splits(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError):
        load_splits(tmp_path / "absent.json")


def test_overlapping_split_file_is_rejected():
    with pytest.raises(ValueError, match="both"):
        Split.from_dict({"protocol": "ie-iqa", "seed": 0, "train": ["a.jpg", "b.jpg"], "test": ["b.jpg"]})


def test_split_applies_to_reordered_and_moved_table():
    table, _ = synthetic_table()
    s = make_splits(table, "iqa-cr", 7)
    want = {p: set(table["image"].iloc[s.indices(table, p)]) for p in ("train", "val", "test")}
    shuffled = table.sample(frac=1.0, random_state=1).reset_index(drop=True)
    assert not shuffled["image"].equals(table["image"])
    for p in want:
        assert set(shuffled["image"].iloc[s.indices(shuffled, p)]) == want[p]
    # The same dataset on another machine (other root folder) maps to the same images.
    moved = shuffled.assign(image=shuffled["image"].str.replace("/data/set", "/mnt/copy/of/set", regex=False))
    for p in want:
        got = {x.replace("/mnt/copy/of/set", "/data/set") for x in moved["image"].iloc[s.indices(moved, p)]}
        assert got == want[p]
    # A table lacking an image of the split is an error, not a silent shrink.
    with pytest.raises(KeyError):
        s.indices(shuffled[shuffled["image"] != sorted(want["test"])[0]], "test")


# ---------------------------------------------------------------------------- SI


def _reference_si(arr: np.ndarray) -> float:
    y = 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]
    kx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], float)
    gx = convolve2d(y, kx, mode="valid")
    gy = convolve2d(y, kx.T, mode="valid")
    return float(np.hypot(gx, gy).std())


def test_spatial_information_flat_and_checkerboard():
    flat = Image.new("RGB", (40, 40), (120, 60, 200))
    assert spatial_information(flat) == pytest.approx(0.0, abs=1e-9)
    yy, xx = np.mgrid[:40, :40]
    board = (((yy // 4) + (xx // 4)) % 2 * 255).astype(np.uint8)
    board_im = Image.fromarray(np.stack([board] * 3, -1))
    si_board = spatial_information(board_im)
    assert si_board > 50
    assert si_board == pytest.approx(_reference_si(np.asarray(board_im, float)), rel=1e-9)
    smooth = Image.fromarray(np.stack([np.tile(np.linspace(0, 255, 40), (40, 1)).astype(np.uint8)] * 3, -1))
    assert 0 <= spatial_information(smooth) < si_board


def test_compute_si_on_files(tmp_path):
    a = write_image(tmp_path / "a.png", 40, 44, seed=1)
    flat = tmp_path / "flat.png"
    Image.new("RGB", (36, 36), (10, 10, 10)).save(flat)
    si = compute_si([str(a), str(flat)], progress=False)
    assert si.shape == (2,)
    assert si[0] == pytest.approx(_reference_si(np.asarray(Image.open(a), float)), rel=1e-9)
    assert si[1] == pytest.approx(0.0, abs=1e-9)


def test_make_splits_reads_images_for_si(tmp_path):
    paths = []
    for i in range(12):
        p = tmp_path / f"{i:02d}.png"
        if i % 2:
            write_image(p, 36, 36, seed=i)
        else:
            Image.new("RGB", (36, 36), (i * 10, 0, 0)).save(p)
        paths.append(str(p))
    table = pd.DataFrame({"image": paths, "mos": np.linspace(10, 90, 12)})
    s = make_splits(table, "iqa-cr", 0)
    s2 = make_splits(table, "iqa-cr", 0, si=compute_si(paths, progress=False))
    assert s.parts == s2.parts
    assert sum(len(v) for v in s.parts.values()) == 12


@pytest.mark.parametrize("body,words", [
    ('{"format": "contentiqa-splits/1"}', "no 'splits' entry"),
    ('[1, 2]', "not a contentiqa split file"),
    ('{"format": "contentiqa-splits/1", "splits": [{"protocol": "ie-iqa", "train": []}]}', "no 'seed' entry"),
    ('{"format": "contentiqa-splits/1", "splits": [{"protocol": "ie-iqa", "seed": "x", "train": []}]}', "'x'"),
    ('{"format": "contentiqa-splits/1", "splits": [{"protocol": "ie-iqa", "seed": 0, "train": ["a"], "test": ["a"]}]}',
     "image a is in both"),
    # a part under another name: its images left the run without a word
    ('{"format": "contentiqa-splits/1", "splits": [{"protocol": "mine", "seed": 0, "train": ["a"], "validation": ["b"]}]}',
     r"entries \['validation'\]: its parts are named train, val, test"),
])
def test_a_damaged_split_file_is_a_value_error_naming_it(tmp_path, body, words):
    path = tmp_path / "s.json"
    path.write_text(body)
    with pytest.raises(ValueError, match=words) as info:
        load_splits(path)
    assert "s.json" in str(info.value)


def test_a_split_path_that_is_a_folder_or_not_text_is_a_value_error_naming_it(tmp_path):
    """A folder raised IsADirectoryError (a traceback from train/evaluate); a binary file a
    decoding error naming neither the file nor what it should be."""
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ValueError, match=r"cannot read split file .*d\.json"):
        load_splits(tmp_path / "d.json")
    (tmp_path / "b.pkl").write_bytes(b"\x80\x04\x95 pickled")
    with pytest.raises(ValueError, match=r"split file .*b\.pkl is not a JSON text file"):
        load_splits(tmp_path / "b.pkl")


def test_numpy_seeds_are_saved(tmp_path):
    table = pd.DataFrame({"image": [f"/d/{i}.png" for i in range(20)], "mos": np.arange(20.0)})
    save_splits(make_split_set(table, "ie-iqa", seeds=np.arange(2), progress=False), tmp_path / "x.json")
    assert [s.seed for s in load_splits(tmp_path / "x.json")] == [0, 1]
