"""The figures of README.md and docs/*.md, written from the files in benchmarks/results.

    python benchmarks/docs.py          # rewrite every generated block
    python benchmarks/docs.py --check  # exit 1 when a block is not what the results files say

A generated block lies between ``<!-- NAME:START -->`` and ``<!-- NAME:END -->`` in its document
(:data:`BLOCKS`). Every figure in one comes from a results file: the JSON a benchmark wrote, or
a table of the Markdown file it wrote beside it, copied as it is. So rerunning a benchmark and
then this script is how the documents' figures change, never by hand; tests/test_docs.py fails
when they disagree.

The README's models table takes each shipped tag's accuracy from the results row that measured
its recipe (:data:`SHIPPED`: when a tag is shipped or retrained, point it at its row here; the
test fails for a shipped tag without one), its speed from speed.json (the weights it measured)
and its size from the files in the package.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
WEIGHTS = ROOT / "src" / "contentiqa" / "weights"
MODEL_LABEL = {"iqa-cr": "`iqa-cr` (native resolution)", "ie-iqa": "`ie-iqa` (384 px)"}

def _experiment(file: str, row: str) -> dict[str, tuple[str, ...]]:
    """Both columns from one row of an experiment's results (its CLIVE and BIQ2021 test parts)."""
    return {"clive": ("experiment", file, row, "CLIVE"), "biq2021": ("experiment", file, row, "BIQ2021")}


def _gate(file: str) -> dict[str, tuple[str, ...]]:
    """Both columns from a ship gate's candidate (an ensemble, which no experiment trains)."""
    return {"clive": ("gate", file, "CLIVE SROCC"), "biq2021": ("gate", file, "BIQ2021 SROCC")}


SHIPPED: dict[str, dict[str, tuple[str, ...]]] = {
    # tag -> column -> where its figure is: ("experiment", file, row, test part) = an experiment's
    # mean ± std over its seeds; ("table", file, row) = a benchmark's rows, mean ± std over splits;
    # ("shipped", file, tag) = the shipped weights themselves on held-out photos; ("gate", file, measure) =
    # the candidate of a ship gate's table (its recipe scored through `contentiqa score` on the test parts:
    # an ensemble, which no experiment trains).
    "ie-iqa.clive-biq2021-v3": _experiment(
        "multi_finetune.json", "IE-IQA, probe + anchors 0.1, then 1:3 from it, mixed on both sets, calibrated"),
    "ie-iqa.clive-biq2021-v2": _experiment("multi_finetune.json", "IE-IQA, probe on BIQ2021 val + anchors 0.1, calibrated"),
    "ie-iqa.clive-biq2021": _experiment("multi_clive_biq2021.json", "IE-IQA, normalised + ranking"),
    "ie-iqa-distortion.clive-biq2021": _experiment(
        "multi_finetune.json", "IE-IQA distortion only, probe + anchors 0.1, then 1:3 from it, mixed on both sets, calibrated"),
    "ie-iqa-distortion+iqa-cr.clive-biq2021": _gate("ship_gate_ie-iqa-distortion+iqa-cr.json"),
    "ie-iqa-distortion.clive-biq2021-v2": _experiment(
        "multi_finetune.json",
        "IE-IQA distortion only at 512 px, probe + anchors 0.3, then 1:3 from it, mixed on both sets, calibrated"),
    "ie-iqa-distortion+iqa-cr.clive-biq2021-v2": _gate("ship_gate_ie-iqa-distortion+iqa-cr_512_weights21.json"),
    # v3 is v2 with its IQA-CR member's content head on the levels: the gate that judged v3 itself (its card's)
    "ie-iqa-distortion+iqa-cr.clive-biq2021-v3": _gate("ship_gate_ie-iqa-distortion+iqa-cr_level_content.json"),
    "ie-iqa-distortion+iqa-cr+ie-iqa.clive-biq2021": _gate("ship_gate_ensemble_specialist_head.json"),
    "ie-iqa-distortion+iqa-cr+ie-iqa-distortion.clive-biq2021": _gate("ship_gate_ensemble_specialist512.json"),
    "ie-iqa-distortion.clive-biq2021-v3": _experiment(
        "multi_finetune.json",
        "IE-IQA distortion only at 512 px, clive-dev specialist frozen, head 1:3 from it with damage 0.3 on both sets, calibrated"),
    "ie-iqa.clive-biq2021-v4": _experiment(
        "multi_finetune.json", "IE-IQA, clive-dev specialist frozen, head 1:3 from it on both sets, calibrated"),
    "ie-iqa.clive": {"clive": ("table", "ie_iqa.json", "IE-IQA, no selection (1280 features) | distortion backbone pretrained"),
                     "biq2021": ("shipped", "generalization.json", "ie-iqa.clive")},
    # v3 is v2 with a content head on the backbone levels (benchmarks/content_head.py): v2's scores
    "iqa-cr.clive-biq2021-v3": _experiment(
        "multi_finetune.json",
        "IQA-CR, probe + anchors 0.1, then 1:3 from it with damage 0.3, mixed on both sets, calibrated"),
    "iqa-cr.clive-biq2021-v2": _experiment(
        "multi_finetune.json",
        "IQA-CR, probe + anchors 0.1, then 1:3 from it with damage 0.3, mixed on both sets, calibrated"),
    # its recipe on the same three splits as v2's (the ship gate's baseline), not the one split of
    # multi_clive_biq2021.json it was first measured on
    "iqa-cr.clive-biq2021": _experiment("multi_finetune.json", "IQA-CR (human scene labels), normalised + ranking"),
    "iqa-cr.clive": {"clive": ("table", "iqa_cr_sweep_cw0.05_d128.json", "iqa-cr"),
                     "biq2021": ("shipped", "generalization.json", "iqa-cr.clive")},
    "iqa-cr-q.clive": {"clive": ("table", "iqa_cr.json", "iqa-cr-q"),
                       "biq2021": ("shipped", "generalization.json", "iqa-cr-q.clive")},
}


def _rng(values: list[float], fmt: str = "{:.2f}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def speed_block(speed: dict, up: str = "../") -> str:
    models = speed["models"]
    rows = []
    for name, r in models.items():
        rows.append(f"| {MODEL_LABEL.get(name, f'`{name}`')} | {r['naive']['ips']:.1f} img/s | "
                    f"{r['fast_torch']['ips']:.1f} img/s | {r['fast_onnx']['ips']:.1f} img/s | {r['limit_ips']:.1f} img/s |")
    onnx = [r["fast_onnx"] for r in models.values()]
    naive_vs_limit = [r["naive"]["ips"] / r["limit_ips"] for r in models.values()]
    lines = [
        f"**Speed** on this {speed['threads']['cpu_count']}-core CPU, {speed['images']['real']} real "
        f"{'×'.join(map(str, speed['images']['real_hw']))} photos, files to CSV "
        f"([benchmarks/results/speed.md]({up}benchmarks/results/speed.md), `python benchmarks/speed.py`):",
        "",
        "| model | naive PyTorch loop | `score --runtime torch` | `score --runtime onnx` | bare backbone in ONNX Runtime (limit) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "On a CPU `contentiqa score` runs ONNX Runtime by default (`--runtime auto`; the graph ships with the model, or is exported once per "
        "weights and cached under `CONTENTIQA_CACHE_DIR`): "
        f"{_rng([o['vs_naive'] for o in onnx], '{:.1f}')}× the naive loop and "
        f"{_rng([o['vs_limit'] for o in onnx])}× the bare-backbone limit (the naive loop itself runs at "
        f"{_rng(naive_vs_limit)}× the limit). This limit is one ONNX Runtime session, a photo at a time, in fp32, "
        "while `score` runs a photo per core; the stricter limit of the cores "
        "section (the bare backbone in its best layout, a photo per core included) is in cores.md.",
    ]
    px = speed.get("pixels", {}).get("iqa-cr", {})
    ms_mp = [v["ms_per_megapixel"] for v in px.values() if v["runtime"] == "onnx"]
    if ms_mp:
        lines[-1] += (f" IQA-CR's cost grows with the pixels ({_rng(ms_mp, '{:.0f}')} ms per megapixel with ONNX), "
                      "IE-IQA's stays flat (it resizes).")
    rss = speed.get("rss", {}).get("onnx")
    if rss:
        lines[-1] += (f" Memory stays flat over {rss['n_inputs']:,} inputs (`{rss['model']}`, "
                      f"{rss['growth_mb']:+.1f} MB after warm-up).")
    vs_naive = [o["vs_naive"] for o in onnx]
    lines[-1] += (" The speed issue's target of 3× the naive loop is "
                  + ("met." if min(vs_naive) >= 3 else "not met on this machine."))
    return "\n".join(lines)


def peers_block(peers: dict, up: str = "../") -> str:
    rows = []
    for key, r in peers["rows"].items():
        acc = "–" if r.get("srocc") is None else f"{r['srocc']:.3f}"
        gflops = "–" if r.get("kind") == "pyiqa" and key == "brisque" else f"{r['gflops']:.1f}"
        params = "–" if not r.get("params") else f"{r['params'] / 1e6:.1f}"
        rows.append(f"| {r['label']} | {params} | {gflops} | {r['ips']:.2f} | {acc} |")
    return "\n".join([
        "",
        f"**Against pyiqa's metrics** ([benchmarks/results/peers.md]({up}benchmarks/results/peers.md), "
        "`python benchmarks/peers.py --pyiqa-python PYIQA_VENV/bin/python`; pyiqa installed in a venv of its own, "
        f"random weights, {peers['n_images']} clive-dev photos one at a time, the same run, one row after another; "
        f"load average {peers['load_before'][0]:.1f} before, {peers['load_after'][0]:.1f} after, the run's own load "
        "included: images/s move with the machine's load from run to run, the ratios inside one run are what the "
        "targets use). CLIVE SROCC as published "
        "(pyiqa's benchmark: trained on other datasets, tested on all of CLIVE) for the peers, and from this "
        "repository's results for contentiqa (the default's recipe retrained on each split, clive-dev test parts; "
        "those parts also chose the recipe, so the figure is slightly optimistic) — different protocols, see "
        "peers.md:",
        "",
        "| model | params (M) | GFLOPs / 500×500 | images/s | CLIVE SROCC |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Targets (issue 13: ≥ 1.5× the fastest learned pyiqa metric and ≥ 7× topiq_nr, with higher CLIVE "
        "accuracy than both). " + peers["verdict"][0],
        "",
        *peers["verdict"][1:],
    ])


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0  # sample std, as the benchmarks' tables
    return f"{statistics.mean(values):.3f} ± {std:.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def clive_figures(tag: str, results: Path = RESULTS) -> dict:
    """A shipped tag's CLIVE figures as SHIPPED points to them (what benchmarks/peers.py cites):
    mean SROCC and PLCC on clive-dev's test parts, the splits, the file and row, and in words how
    they were measured. OSError / KeyError / ValueError when the file does not hold them."""
    where = SHIPPED[tag]["clive"]
    kind, file = where[0], where[1]
    data = json.loads((results / file).read_text())
    if kind == "experiment":
        summary = data["runs"][where[2]]["summary"][where[3]]
        srocc, plcc, n = summary["srocc"]["mean"], summary["plcc"]["mean"], summary["srocc"]["n"]
        labels = [{"CLIVE": "clive-dev"}.get(d["label"], d["label"]) for d in data["data"]]
        how = f"trained on {' + '.join(labels)}, {n} splits, clive-dev test parts"
        row = where[2]
    elif kind == "table":
        runs = data["results"][where[2]]["runs"]
        srocc, plcc = (statistics.mean(r[k] for r in runs) for k in ("srocc", "plcc"))
        n = len(runs)
        how = f"trained on clive-dev alone, {n} splits ({data['protocol']} protocol), clive-dev test parts"
        row = where[2]
    elif kind == "gate":
        if data.get("part", "test") != "test":
            raise ValueError(f"{file} judged validation parts, not test parts")
        seeds = data["per_seed"]["candidate"]
        srocc, plcc = (statistics.mean(s[k] for s in seeds) for k in ("CLIVE SROCC", "CLIVE PLCC"))
        n = len(seeds)
        how = f"the recipe this ship gate passed, {n} splits, clive-dev test parts, scored by `contentiqa score`"
        row = "candidate"
    else:
        raise ValueError(f"{tag}: SHIPPED gives no clive-dev test figures for it ({kind})")
    return {"weights": tag, "srocc": srocc, "plcc": plcc, "splits": n, "file": f"benchmarks/results/{file}",
            "row": row, "how": how}


def accuracy(where: tuple[str, ...]) -> str:
    """SROCC of one models-table cell, from the results file ``where`` names."""
    kind, file = where[0], where[1]
    data = _load(file)
    if kind == "experiment":
        srocc = data["runs"][where[2]]["summary"][where[3]]["srocc"]
        return f"{srocc['mean']:.3f} ± {srocc['std']:.3f}" if srocc["n"] > 1 else f"{srocc['mean']:.3f}"
    if kind == "table":
        return _mean_std([r["srocc"] for r in data["results"][where[2]]["runs"]])
    if kind == "shipped":
        return f"{data['shipped']['models'][where[2]]['srocc']:.3f}"
    if kind == "gate":
        if data.get("part", "test") != "test":
            raise ValueError(f"{file} judged validation parts, not test parts")
        return _mean_std([s[where[2]] for s in data["per_seed"]["candidate"]])
    raise ValueError(f"unknown kind {kind!r} in SHIPPED")


def models_block(up: str = "") -> str:
    """README's models table: every shipped tag (the registry's list), accuracy, speed, size."""
    sys.path.insert(0, str(ROOT / "src"))
    from contentiqa import DEFAULT_MODEL
    from contentiqa.models.registry import list_pretrained, model_entry, shipped_weights_path

    speed = _load("speed.json")
    graphs_mb = sum(p.stat().st_size for p in [*WEIGHTS.glob("*.onnx"), *WEIGHTS.glob("*.bin")]) / 1e6
    rows = []
    for tag in list_pretrained():
        name = tag.split(".")[0]
        where = SHIPPED.get(tag)
        if where is None:
            raise SystemExit(f"{tag} is shipped but benchmarks/docs.py's SHIPPED names no results row for it")
        weights = shipped_weights_path(tag)
        measured = speed["models"].get(name, {})
        ips = measured.get("fast_onnx", {}).get("ips") if weights.name in measured.get("weights", "") else None
        is_default_tag = tag.split(".")[1] == model_entry(name).default_tag
        label = f"`{name}` (= `{tag}`)" if is_default_tag else f"`{tag}`"
        label += " **default**" if is_default_tag and name == DEFAULT_MODEL else ""
        size = weights.stat().st_size / 1e6
        rows.append(f"| {label} | {accuracy(where['clive'])} | {accuracy(where['biq2021'])} | "
                    f"{'–' if ips is None else f'{ips:.1f}'} | {size:.1f} MB |")
    return "\n".join([
        "| `-m` | CLIVE SROCC | BIQ2021 SROCC | images/s (2 CPU cores) | weights |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"SROCC with people's scores on test photos never used in training: clive-dev test parts (mean ± std over "
        f"seeded splits) and BIQ2021's official test part (the `*.clive` tags: 200 of its photos). Recipes were "
        "compared on those same test parts before shipping (the ship gate reads them), so the figures of the tags "
        "chosen are slightly optimistic; the rows behind "
        f"each figure, and which choices read test parts, are in [docs/results.md]({up}docs/results.md). Images/s: `contentiqa score` on "
        f"{speed['images']['real']} real {'×'.join(map(str, speed['images']['real_hw']))} photos, ONNX Runtime, "
        f"start-up excluded ([speed]({up}docs/speed.md); measured for the weights the default tag had then, "
        "– where not measured). Weights: the PyTorch file (the pip-installed ImageNet backbones not repeated); the "
        f"ONNX graphs of all tags share {graphs_mb:.0f} MB of tensors, each stored once.",
    ])


def install_block(up: str = "") -> str:
    path = RESULTS / "install.json"
    if not path.is_file():
        return "Install size and time: not measured yet (`python benchmarks/install.py`)."  # until it is run
    res = json.loads(path.read_text())
    free, full = res["installs"].get("torch_free"), res["installs"].get("torch")
    parts = []
    if free:
        parts.append(f"`pip install .` takes {free['seconds']:.0f} s and {free['size_mb']:.0f} MB")
    if full:
        parts.append(f"with `[torch]` {full['seconds']:.0f} s and {full['size_mb'] / 1000:.1f} GB"
                     + (f" (measured {str(full.get('when') or 'earlier')[:10]})" if full.get("carried") else ""))
    return "; ".join(parts) + f" ([install.md]({up}benchmarks/results/install.md), {res['when'][:10]})."


_TABLE = re.compile(r"(?:^\|.*\|\n)+", re.M)


def section(file: str, heading: str | None = None, table: int = 0, keep_heading: bool = True) -> str:
    """Table number ``table`` of a results Markdown file (of the section whose heading starts with
    ``heading``, with that heading as a bold line), copied as it is."""
    text = (RESULTS / file).read_text()
    title = ""
    if heading is not None:
        parts = re.split(r"^(#+ .*)$", text, flags=re.M)
        for k in range(1, len(parts), 2):
            if parts[k].lstrip("# ").startswith(heading):
                title, text = parts[k].lstrip("# ").strip(), parts[k + 1]
                break
        else:
            raise SystemExit(f"{file}: no section '{heading}'")
    tables = _TABLE.findall(text)
    if len(tables) <= table:
        raise SystemExit(f"{file}: no table {table + 1}" + (f" under '{heading}'" if heading else ""))
    body = tables[table].rstrip("\n")
    return (f"**{title}**\n\n{body}" if title and keep_heading else body) + f"\n\n(from [{file}](../benchmarks/results/{file}))"


def speed_and_peers() -> str:
    block = speed_block(_load("speed.json"))
    if (RESULTS / "peers.json").is_file():
        block += "\n" + peers_block(_load("peers.json"))
    return block


BLOCKS: dict[tuple[str, str], Callable[[], str]] = {
    ("README.md", "MODELS"): models_block,
    ("README.md", "INSTALL"): install_block,
    ("docs/speed.md", "SPEED"): speed_and_peers,
    ("docs/speed.md", "STARTUP"): lambda: section("startup.md"),
    ("docs/speed.md", "CORES"): lambda: section("cores.md"),
    ("docs/speed.md", "INT8"): lambda: "\n\n".join(section("int8.md", table=t) for t in range(3)),
    ("docs/results.md", "GENERALIZATION"): lambda: "\n\n".join(
        section("generalization.md", h) for h in ("Trained on BIQ2021", "Trained on clive-dev (", "Trained on clive-dev +",
                                                  "The CLIVE-only shipped weights")),
    ("docs/results.md", "IQA_CR"): lambda: section("iqa_cr.md") + "\n\nThe shipped `iqa-cr.clive` recipe (content loss "
                                           "0.05, D = 128):\n\n" + section("iqa_cr_sweep_cw0.05_d128.md"),
    ("docs/results.md", "IE_IQA"): lambda: section("ie_iqa.md"),
    ("docs/serving.md", "SERVE_LOAD"): lambda: section("serve_load.md", table=0) + "\n\n" + section("serve_load.md", table=1),
}


def replace_block(text: str, name: str, block: str, where: str = "") -> str:
    start, end = f"<!-- {name}:START -->", f"<!-- {name}:END -->"
    if start not in text or end not in text:
        raise SystemExit(f"{where}: the markers {start} / {end} are missing")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"


def render_all() -> dict[Path, tuple[str, str]]:
    """``document -> (text now, text with every block generated)``."""
    out: dict[Path, tuple[str, str]] = {}
    for (doc, name), make in BLOCKS.items():
        path = ROOT / doc
        old, new = out.get(path, (path.read_text(), path.read_text()))
        out[path] = (old, replace_block(new, name, make(), doc))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated block is out of date")
    args = ap.parse_args(argv)
    stale = []
    for path, (old, new) in render_all().items():
        if new == old:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            from contentiqa.utils.io import atomic_write_text

            atomic_write_text(path, new)
            print(f"rewrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date: {', '.join(map(str, stale))}: run python benchmarks/docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
