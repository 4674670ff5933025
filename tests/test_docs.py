"""The documents: a README for a user starting out (at most 250 lines, the two commands first),
figures in README.md and docs/*.md that are what benchmarks/results says, and links that lead
somewhere."""
from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))


@pytest.fixture
def docs_tool(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("docs", None)
    return importlib.import_module("docs")


def test_readme_is_short_and_starts_with_what_it_is_and_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:12])
    assert "make run" in head and "make test" in head
    assert lines[0].startswith("# ") and all(lines[k].strip() for k in (2, 3, 4))  # what it is, in three lines


def test_every_generated_block_is_what_the_results_files_say(docs_tool):
    """README's models table and the docs' tables come from benchmarks/results by
    benchmarks/docs.py: a rerun benchmark (or a new shipped tag) without rerunning it fails here."""
    stale = [str(path.relative_to(REPO)) for path, (old, new) in docs_tool.render_all().items() if new != old]
    assert not stale, f"out of date: {stale}: run python benchmarks/docs.py"
    assert {doc for doc, _ in docs_tool.BLOCKS} >= {"README.md", "docs/results.md", "docs/speed.md", "docs/serving.md"}


def test_every_shipped_tag_has_its_figures(docs_tool):
    from contentiqa.models.registry import list_pretrained

    assert set(docs_tool.SHIPPED) == set(list_pretrained())
    table = docs_tool.models_block()
    for tag in list_pretrained():
        assert f"`{tag}`" in table
    assert re.search(r"\| \d\.\d{3}", table)  # figures, not placeholders


def test_a_block_out_of_date_is_caught(docs_tool, tmp_path, monkeypatch):
    """The check is real: a changed figure in a results file makes the documents stale."""
    results = tmp_path / "results"
    results.mkdir()
    for f in (REPO / "benchmarks" / "results").iterdir():
        if f.is_file():
            (results / f.name).write_bytes(f.read_bytes())
    text = (results / "startup.md").read_text()
    first_figure = re.search(r"^\|[^|\n]*\| (\d+\.\d+) \|", text, flags=re.M)  # the table's first timing
    assert first_figure, "startup.md has no table of timings"
    changed = f"{float(first_figure.group(1)) + 1.0:.2f}"
    (results / "startup.md").write_text(text[:first_figure.start(1)] + changed + text[first_figure.end(1):])
    monkeypatch.setattr(docs_tool, "RESULTS", results)
    stale = [path.name for path, (old, new) in docs_tool.render_all().items() if new != old]
    assert "speed.md" in stale


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_lead_to_files(doc):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if re.match(r"^[a-z]+://", target):
            continue
        assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


CARDS = REPO / "src" / "contentiqa" / "weights"


def card_figures(results: Path) -> list[tuple[str, Path, str, str, str]]:
    """(card, results file, row, what its Measured line says, what the results file says) for every
    card section that quotes an experiment's figures; a gate's verdict is named by file instead."""
    sys.modules.pop("ship", None)
    ship = importlib.import_module("ship")
    found = []
    for card in sorted(CARDS.glob("*.md")):
        # A card that started from other weights carries their card too, one heading down.
        for section in re.split(r"\n(?=#+ Model card)", card.read_text()):
            row = re.search(r'Row "(.+?)" of `configs/(.+?)\.yaml`', section)
            said = re.search(r"\*\*Measured\*\* \(held-out test parts of the experiment's splits[^)]*\): (.+)", section)
            if row and said:
                file = results / f"{row.group(2)}.json"
                found.append((card.name, file, row.group(1), said.group(1), ship.figures_from(file, row.group(1))))
    return found


def agrees(said: str, now: str) -> bool:
    # The card may add a note inside the closing parenthesis: "(3 split(s); the row's latest run ...)".
    return said.startswith(now[:-1])


@pytest.fixture
def benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))


def test_model_cards_quote_what_their_experiment_measured(benchmarks_on_path):
    """ship.py writes a card's figures once; a rerun experiment changes its results file. A card
    that no longer says what its row measured fails here (rerun the row or correct the card)."""
    checked = card_figures(REPO / "benchmarks" / "results")
    assert len(checked) >= 5, "no card quotes an experiment's figures: the card format changed?"
    stale = [(card, row, said, now) for card, _, row, said, now in checked if not agrees(said, now)]
    assert not stale, stale
    for card in CARDS.glob("*.md"):
        for gate in re.findall(r"\*\*Measured\*\*: (benchmarks/results/\S+\.md)", card.read_text()):
            assert (REPO / gate).is_file(), f"{card.name} names {gate}, which does not exist"


def test_a_card_out_of_date_is_caught(benchmarks_on_path, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for f in (REPO / "benchmarks" / "results").glob("*.json"):
        (results / f.name).write_bytes(f.read_bytes())
    card, file, row, said, now = card_figures(results)[0]
    assert agrees(said, now)
    data = json.loads(file.read_text())
    first_set = next(iter(data["runs"][row]["summary"].values()))
    first_set["srocc"]["mean"] += 0.01
    file.write_text(json.dumps(data))
    assert not agrees(*next((s, n) for c, _, r, s, n in card_figures(results) if (c, r) == (card, row)))
