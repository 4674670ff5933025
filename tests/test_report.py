"""The self-contained HTML report (``contentiqa score -o report.html``)."""
from __future__ import annotations

import base64
import csv
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contentiqa.cli.main import main
from contentiqa.reporting import read_html_rows, render_html_report, write_html_report
from tiny_models import cached_loader, one_torch_thread, tiny_checkpoint  # noqa: F401


@pytest.fixture
def ckpt(monkeypatch) -> str:
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    return tiny_checkpoint()


def images(folder: Path, n: int, size=(72, 96)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, size=(*size, 3), dtype=np.uint8)
        p = folder / f"photo{i}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        out.append(p)
    return out


def decode_uris(text: str, mime: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(rf"data:{mime};base64,([A-Za-z0-9+/=]+)", text)]


def test_report_cards_thumbnails_histogram(tmp_path, ckpt):
    imgs = images(tmp_path / "imgs", 4)
    broken = tmp_path / "imgs" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = tmp_path / "report.html"
    assert main(["score", str(tmp_path / "imgs"), "--model", ckpt, "-o", str(out), "-q"]) == 1
    text = out.read_text()
    assert text.count('<div class="card"') == len(imgs)  # one card per scored image
    thumbs = decode_uris(text, "image/jpeg")
    assert len(thumbs) == len(imgs) and all(max(t.size) <= 256 for t in thumbs)
    assert not decode_uris(text, "image/png") and 'class="histogram"' in text  # the histogram: CSS bars, no image
    assert text.count('class="hbar"') == 20
    assert sum(int(n) for n in re.findall(r'class="hbar" title="[^"]*: (\d+) image\(s\)"', text)) == len(imgs)
    heights = [int(h) for h in re.findall(r'class="hbar"[^>]*height:(\d+)px', text)]
    assert sum(1 for h in heights if h > 0) >= 1 and max(heights) == 120  # the fullest bin is full height
    # self-contained: no external assets or scripts
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "<script src" not in text and "<link" not in text
    # summary, categories, failures
    assert "iqa-cr" in text and "0 to 100, higher is better" in text
    assert "4 scored, 1 failed" in text and "Categories" in text
    assert "broken.jpg" in text and "Failed inputs (1)" in text
    # best first
    shown = [float(s) for s in re.findall(r'<div class="score">([0-9.]+)', text)]
    assert shown == sorted(shown, reverse=True)
    rows = read_html_rows(text)
    assert len(rows) == 5 and sum(r["error"] is not None for r in rows) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_report_with_heatmaps_and_limit(tmp_path, ckpt):
    images(tmp_path / "imgs", 3)
    out = tmp_path / "report.html"
    assert main(["score", str(tmp_path / "imgs"), "--model", ckpt, "-o", str(out), "-q", "--explain"]) == 0
    text = out.read_text()
    assert text.count('class="heatmap"') == 3
    assert main(["score", str(tmp_path / "imgs"), "--model", ckpt, "-o", str(out), "-q", "--force",
                 "--explain", "--explain-limit", "1"]) == 0
    text = out.read_text()
    assert text.count('class="heatmap"') == 1 and text.count('<div class="card"') == 3
    # the heatmap is on the best card
    first_card = text.split('<div class="card"')[1]
    assert 'class="heatmap"' in first_card


def test_resume_keeps_the_reports_heatmaps_and_their_caption(tmp_path, ckpt):
    """A resumed report dropped every heatmap of the earlier run."""
    imgs = images(tmp_path / "imgs", 3)
    out = tmp_path / "report.html"
    assert main(["score", str(imgs[0]), str(imgs[1]), "--model", ckpt, "-o", str(out), "-q", "--explain"]) == 0
    before = re.findall(r'class="heatmap" data-path="[^"]*" src="([^"]+)"', out.read_text())
    assert len(before) == 2
    assert main(["score", *map(str, imgs), "--model", ckpt, "-o", str(out), "-q", "--resume"]) == 0
    text = out.read_text()
    assert re.findall(r'class="heatmap" data-path="[^"]*" src="([^"]+)"', text) == before
    assert "Right-hand image: quality heatmap (Grad-CAM x attention; red: the regions that raised the score most" in text
    assert "kept from the earlier run" in text
    # a name holding a carriage return: read back as written, its heatmap kept with its row
    odd = tmp_path / "cr"
    odd.mkdir()
    os.replace(imgs[0], odd / "a\rb.png")
    os.replace(imgs[1], odd / "plain.png")
    out2 = tmp_path / "cr.html"
    assert main(["score", str(odd), "--model", ckpt, "-o", str(out2), "-q", "--explain"]) == 0
    os.replace(imgs[2], odd / "added.png")
    assert main(["score", str(odd), "--model", ckpt, "-o", str(out2), "-q", "--resume"]) == 0
    assert out2.read_bytes().decode().count('class="heatmap"') == 2


def test_an_explained_resume_from_another_folder_explains_the_earlier_rows_again(tmp_path, ckpt, monkeypatch):
    """The earlier rows' relative paths were opened from this folder: their heatmaps became
    "no heatmap (... does not exist)" problems, though the rows themselves were matched."""
    images(tmp_path / "proj" / "p", 3)
    monkeypatch.chdir(tmp_path / "proj")
    assert main(["score", "p", "--model", ckpt, "-o", "rep.html", "-q", "--explain"]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["score", "proj/p", "--model", ckpt, "-o", "proj/rep.html", "-q", "--explain", "--resume"]) == 0
    text = (tmp_path / "proj" / "rep.html").read_text()
    assert text.count('class="heatmap"') == 3 and "no heatmap" not in text


def test_heatmaps_of_a_model_without_attention_say_plain_grad_cam(tmp_path):
    """The report called IE-IQA's maps "Grad-CAM x attention"; it has no attention."""
    import contentiqa
    from contentiqa.models.registry import save_checkpoint

    model = contentiqa.create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False,
                                    hidden=(8, 4), input_size=64)
    ckpt = save_checkpoint(model, tmp_path / "ie.pt")
    out = tmp_path / "report.html"
    assert main(["score", str(images(tmp_path / "imgs", 2)[0]), "--model", str(ckpt), "-o", str(out), "-q",
                 "--explain"]) == 0
    text = out.read_text()
    assert "Right-hand image: quality heatmap (Grad-CAM; red:" in text and "x attention" not in text
    assert "heatmaps: quality heatmap (Grad-CAM; red: the regions that raised the score most, blue: none), for the 1 best-scored" in text


def test_report_resume_reuses_rows_and_thumbnails(tmp_path, ckpt):
    imgs = images(tmp_path / "imgs", 3)
    out = tmp_path / "report.html"
    assert main(["score", str(imgs[0]), str(imgs[1]), "--model", ckpt, "-o", str(out), "-q"]) == 0
    first = {r["path"]: r["score"] for r in read_html_rows(out.read_text())}
    assert main(["score", *map(str, imgs), "--model", ckpt, "-o", str(out), "-q", "--resume"]) == 0
    text = out.read_text()
    rows = read_html_rows(text)
    assert len(rows) == 3 and all(first[p] == s for p, s in ((r["path"], r["score"]) for r in rows) if p in first)
    assert text.count('<div class="card"') == 3 and len(decode_uris(text, "image/jpeg")) == 3


def test_render_lower_is_better_and_escaping(tmp_path):
    rows = [
        {"path": "a<b>.jpg", "score": 10.0, "category": None, "category_confidence": None, "error": None, "notes": ""},
        {"path": "c.jpg", "score": 50.0, "category": None, "category_confidence": None, "error": None, "notes": "x & y"},
        {"path": "d.jpg", "score": None, "category": None, "category_confidence": None, "error": "file does not exist", "notes": ""},
    ]
    info = {"name": "dmos-model", "score_range": (0.0, 100.0), "higher_is_better": False}
    html = render_html_report(rows, info)
    assert "lower is better" in html
    assert "a&lt;b&gt;.jpg" in html and "<b>" not in html and "x &amp; y" in html
    shown = [float(s) for s in re.findall(r'<div class="score">([0-9.]+)', html)]
    assert shown == [10.0, 50.0]  # best (lowest) first
    assert read_html_rows(html) == rows  # embedded JSON round-trips, even with '<' in paths
    out = write_html_report(tmp_path / "r.html", rows, info)
    assert out.read_text().count('<div class="card"') == 2  # no file: no thumbnail, still a card


def test_missing_thumbnails_are_read_from_each_rows_folder_or_where_it_moved(tmp_path, monkeypatch):
    """A row of another folder's photo got this folder's file of that name as its picture; a row whose
    folder has moved away is read where its path points from here."""
    for folder, colour in (("day1", (250, 0, 0)), ("day2", (0, 0, 250))):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (40, 30), colour).save(tmp_path / folder / "a.png")
    info = {"name": "m", "score_range": (0.0, 100.0), "higher_is_better": True}
    row = {"path": "a.png", "score": 50.0, "category": None, "category_confidence": None, "error": None, "notes": ""}
    monkeypatch.chdir(tmp_path / "day2")
    for start, red in ((tmp_path / "day1", True), (tmp_path / "gone", False), (None, False)):
        out = write_html_report(tmp_path / "r.html", [{**row, "start_folder": start and str(start)}], info)
        (thumb,) = decode_uris(out.read_text(), "image/jpeg")
        r, _, b = thumb.convert("RGB").getpixel((5, 5))
        assert (r > b) == red, start
    (tmp_path / "day1" / "a.png").unlink()  # its folder there, its photo gone: no picture, not another one
    out = write_html_report(tmp_path / "r.html", [{**row, "start_folder": str(tmp_path / "day1")}], info)
    assert decode_uris(out.read_text(), "image/jpeg") == []


def test_a_score_that_is_no_number_is_shown_as_none(tmp_path):
    """A hand-made row scoring NaN or inf was histogram_html's traceback, and JSON's NaN token."""
    import json

    from contentiqa.reporting import write_results

    rows = [{"path": f"{v}.jpg", "score": float(v), "category": None, "category_confidence": None, "error": None,
             "notes": ""} for v in ("nan", "inf", "-inf", "40")]
    html = render_html_report(rows, {"name": "m", "score_range": (0.0, 100.0)})
    assert re.findall(r'<div class="score">([0-9.]+)', html) == ["40.00"]
    assert [r["score"] for r in read_html_rows(html)] == [None, None, None, 40.0]
    out = write_results(tmp_path / "r.json", rows)
    assert [r["score"] for r in json.loads(out.read_text(), parse_constant=pytest.fail)] == [None, None, None, 40.0]
    out = write_results(tmp_path / "r.csv", rows)
    assert [line.split(",")[1] for line in out.read_text().splitlines()[1:]] == ["", "", "", "40.0"]


def test_cards_follow_the_sort_asked_for(tmp_path, ckpt):
    """--sort worst (or path) ordered the table and the embedded rows, while the cards stayed best first."""
    images(tmp_path / "imgs", 4)
    out = tmp_path / "r.html"
    for order, heading in (("worst", "worst first"), ("best", "best first"), ("path", "by path")):
        assert main(["score", str(tmp_path / "imgs"), "--model", ckpt, "-o", str(out), "-q", "--force",
                     "--sort", order]) == 0
        text = out.read_text()
        cards = re.findall(r'<div class="name" title="[^"]*">([^<]*)</div>', text)
        assert cards == [r["path"] for r in read_html_rows(text)], order  # the cards in the file's order
        assert f"Images, {heading} (4)" in text


def test_a_row_with_a_category_and_no_score_does_not_undo_the_sort(tmp_path, ckpt):
    """One such row (its score cell emptied by hand) put every row in path order under 'best first';
    --resume kept it as scored. It is scored again now, and the sort puts unscored rows after."""
    from contentiqa.reporting.results import sort_rows

    rows = [{"path": p, "score": s, "category": "plant", "error": None} for p, s in (("a", 1.0), ("b", None), ("c", 9.0))]
    assert [r["path"] for r in sort_rows(rows, "-score")] == ["c", "a", "b"]
    images(tmp_path / "imgs", 3)
    out = tmp_path / "r.csv"
    assert main(["score", str(tmp_path / "imgs"), "--model", ckpt, "-o", str(out), "-q"]) == 0
    table = out.read_text().splitlines()
    head, first = table[0].split(","), table[1].split(",")
    first[head.index("score")] = ""
    out.write_text("\n".join([table[0], ",".join(first), *table[2:]]) + "\n")
    assert main(["score", str(tmp_path / "imgs"), "--model", ckpt, "-o", str(out), "-q", "--resume"]) == 0
    with open(out, newline="") as f:
        scores = [r["score"] for r in csv.DictReader(f)]
    assert len(scores) == 3 and all(scores), scores
    # a very tall photo's card is capped, not thousands of pixels tall
    assert ".card img{width:100%;height:auto;max-height:320px" in render_html_report(rows, {"name": "m", "score_range": (0.0, 100.0)})


def test_a_content_only_models_report_shows_categories_not_a_quality_ranking(tmp_path):
    """It was titled a quality report with a score scale, an empty score histogram and ranks."""
    rows = [{"path": p, "score": None, "category": c, "category_confidence": 0.5, "error": None, "notes": ""}
            for p, c in (("b.jpg", "plant"), ("a.jpg", "human"))]
    rows.append({"path": "c.jpg", "score": None, "category": None, "category_confidence": None,
                 "error": "file does not exist", "notes": ""})
    info = {"name": "iqa-cr-c", "score_range": (0.0, 100.0), "higher_is_better": True, "predicts_score": False,
            "categories": ["human", "plant"]}
    html = render_html_report(rows, info)
    assert "contentiqa content report" in html and "content categories only" in html
    assert "score scale" not in html and "Score distribution" not in html and "#1" not in html
    assert "2 classified, 1 failed" in html and "Images, by path (2)" in html
    assert re.findall(r'<div class="name" title="[^"]*">([^<]*)</div>', html) == ["a.jpg", "b.jpg"]


def test_names_with_controls_are_shown_escaped_and_kept_as_they_are(tmp_path):
    """A bidirectional override showed 'a\\u202etxt.jpg' as "agpj.txt", a file that does not exist."""
    name = "nu/a\u202etxt.jpg"
    rows = [{"path": name, "score": 40.0, "category": None, "category_confidence": None, "error": None, "notes": ""},
            {"path": "x\u202e.jpg", "score": None, "category": None, "category_confidence": None,
             "error": "file does not exist", "notes": ""}]
    html = render_html_report(rows, {"name": "m", "score_range": (0.0, 100.0), "higher_is_better": True},
                              notes=[f"{name}: no heatmap"])  # the notes name files too
    assert "\u202e" not in html.split('<script type="application/json"')[0]
    assert "nu/a\\u202etxt.jpg" in html and "x\\u202e.jpg" in html
    assert read_html_rows(html) == rows  # the rows themselves keep the name
    # a model's name, its file and its categories are shown so too
    rows[0]["category"], rows[0]["category_confidence"] = "bell\x07\u202eRLO", 0.5
    html = render_html_report(rows, {"name": "m\u202ex", "checkpoint": "ab\u202ecod.pt", "score_range": (0.0, 100.0),
                                     "higher_is_better": True, "categories": ["bell\x07\u202eRLO"]})
    shown = html.split('<script type="application/json"')[0]
    assert "\u202e" not in shown and "\x07" not in shown and "ab\\u202ecod.pt" in shown


def test_the_badge_beside_a_score_is_its_rank_by_quality_in_any_card_order():
    """'#N' was the card's position: '43.61 #3' read as a rank under --sort path."""
    rows = [{"path": f"{n}.jpg", "score": s, "category": None, "category_confidence": None, "error": None, "notes": ""}
            for n, s in (("a", 28.2), ("b", 39.1), ("c", 43.6), ("d", 40.5))]
    for hib, order, want in ((True, "path", ["#4", "#3", "#1", "#2"]), (True, "score", ["#4", "#3", "#2", "#1"]),
                             (False, "path", ["#1", "#2", "#4", "#3"])):
        html = render_html_report(rows, {"name": "m", "score_range": (0.0, 100.0), "higher_is_better": hib}, order=order)
        assert re.findall(r'(#\d+)</span></div>', html) == want, (hib, order)
    # equal scores share a rank; a row without a score (a hand-made table) has no badge
    rows[1]["score"] = 43.6
    rows.append({**rows[0], "path": "e.jpg", "score": None})
    html = render_html_report(rows, {"name": "m", "score_range": (0.0, 100.0), "higher_is_better": True}, order="path")
    assert re.findall(r'(#\d+)</span></div>', html) == ["#4", "#1", "#1", "#3"]


def test_images_of_a_name_that_is_not_utf8_read_back_under_that_name(tmp_path):
    """Such a name is written backslash-escaped: a resumed report lost its heatmap and thumbnail
    while its caption still counted them."""
    from contentiqa.reporting.html import read_html_heatmaps, read_html_thumbnails

    odd = os.fsdecode(b"imgs/bad\xff.jpg")
    rows = [{"path": p, "score": s, "category": None, "category_confidence": None, "error": None, "notes": ""}
            for p, s in ((odd, 40.0), ("imgs/good.jpg", 60.0))]
    jpeg = {p: bytes([i]) * 8 for i, p in enumerate((odd, "imgs/good.jpg"))}
    info = {"name": "m", "score_range": (0.0, 100.0), "higher_is_better": True}
    out = write_html_report(tmp_path / "r.html", rows, info, thumbnails=jpeg, heatmaps=jpeg,
                            fill_missing_thumbnails=False)
    text = out.read_text(encoding="utf-8")
    assert read_html_thumbnails(text) == jpeg
    assert read_html_heatmaps(text)[0] == jpeg
    # the caption counts the heatmaps on cards, not the ones handed in
    only = render_html_report(rows[1:], info, heatmaps=jpeg)
    assert "shown for 1 image(s)" in only
