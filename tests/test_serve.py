"""`contentiqa serve`: the API with the framework's test client and a tiny model, the batcher,
a real server process (graceful shutdown, slow and vanishing clients) and the browser page in
a real headless browser."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs FastAPI (a dependency of contentiqa)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from contentiqa.serve.app import LoadedModel, ServeConfig, create_app  # noqa: E402
from contentiqa.serve.batching import Batcher, QueueFull  # noqa: E402
from tiny_models import one_torch_thread, tiny_model  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]


def jpeg(seed: int = 0, size: tuple[int, int] = (64, 80), quality: int = 90) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def big_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 150)).save(buf, format="PNG")  # flat: a few KB however large
    return buf.getvalue()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A tiny random IQA-CR whose scores fall inside the scale and differ between images (seed
    5), so that comparing scores compares something (seed 0's are all clipped to 0)."""
    from contentiqa.models.registry import save_checkpoint

    return str(save_checkpoint(tiny_model("iqa-cr", seed=5), tmp_path_factory.mktemp("serve") / "tiny-serve.pt"))


@pytest.fixture(scope="module")
def model(ckpt):
    from contentiqa.models.registry import load_checkpoint

    return load_checkpoint(ckpt)


def loaded(model) -> LoadedModel:
    """What the service runs for a torch model: its PyTorch scorer, and the model for heatmaps."""
    from contentiqa.inference.torch_runtime import TorchScorer

    return LoadedModel(TorchScorer(model, spec="tiny"), explainer=model)


def client_for(model, **cfg) -> TestClient:
    return TestClient(create_app(ServeConfig(**cfg), model=loaded(model)))


def files(*parts: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in parts]


# -- scoring ---------------------------------------------------------------------------------
@pytest.mark.parametrize("decode_workers", [2, 0], ids=["decoded-beside-the-model", "decoded-on-its-thread"])
def test_score_rows_match_the_cli_and_bad_images_get_their_error(model, ckpt, tmp_path, decode_workers):
    from contentiqa.cli.main import main

    good = jpeg(1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the reader's note must reach the row
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(72, 60, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90, exif=exif)
    other = buf.getvalue()
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "other.jpg").write_bytes(other)
    assert main(["score", str(tmp_path / "good.jpg"), str(tmp_path / "other.jpg"), "--model", ckpt,
                 "-o", str(tmp_path / "s.csv"), "-q"]) == 0
    cli = {Path(r["path"]).name: r for r in csv.DictReader(open(tmp_path / "s.csv"))}

    with client_for(model, decode_workers=decode_workers) as c:
        r = c.post("/v1/score", files=files(("good.jpg", good), ("notes.txt", b"not a photo"),
                                             ("cut.jpg", good[: len(good) // 2]), ("other.jpg", other)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_images"] == 4 and body["n_failed"] == 2
    assert body["model"]["name"] == "iqa-cr" and body["model"]["version"]
    assert body["model"]["weights"] == Path(ckpt).name and len(body["model"]["weights_sha256"]) == 64
    rows = body["results"]
    assert [row["filename"] for row in rows] == ["good.jpg", "notes.txt", "cut.jpg", "other.jpg"]
    assert [row["index"] for row in rows] == [0, 1, 2, 3]
    for row, name in ((rows[0], "good.jpg"), (rows[3], "other.jpg")):
        assert row["error"] is None
        assert row["score"] == pytest.approx(float(cli[name]["score"]), abs=1e-4)
        assert row["category"] == cli[name]["category"]
        assert row["category_confidence"] == pytest.approx(float(cli[name]["category_confidence"]), abs=1e-5)
        assert row["notes"] == cli[name]["notes"]
        assert row["scale"] == [0.0, 100.0]
        assert set(row["probabilities"]) == set(model.categories)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "EXIF orientation 6 applied" in rows[3]["notes"]
    assert rows[1]["score"] is None and "not an image" in rows[1]["error"]
    assert rows[2]["score"] is None and "truncated" in rows[2]["error"]


def test_a_part_that_is_no_file_is_refused_not_dropped(model):
    """A part without filename= is a text field to the parser: it was dropped with a 200, and
    every row after it answered for the upload before."""
    body = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n\r\n" + jpeg(1) +
            b"\r\n--b\r\nContent-Disposition: form-data; name=\"files\"\r\n\r\n" + jpeg(2) +
            b"\r\n--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"c.jpg\"\r\n\r\n" + jpeg(3) +
            b"\r\n--b--\r\n")
    with client_for(model) as c:
        r = c.post("/v1/score", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400 and "part 2 ('files') is not a file part" in r.json()["detail"]
    # alone (a client sending a non-ASCII name as filename*= only): the same reason, not "no image files"
    only = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename*=UTF-8''%D1%84.jpg\r\n\r\n" + jpeg(1)
            + b"\r\n--b--\r\n")
    with client_for(model) as c:
        r = c.post("/v1/score", content=only, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400 and "part 1 ('files') is not a file part" in r.json()["detail"]


def test_uploads_are_never_opened_by_name_and_leave_no_file(model):
    app = create_app(ServeConfig(), model=loaded(model))
    svc = app.state.service
    with TestClient(app) as c:
        r = c.post("/v1/score", files=files(("/etc/hostname", b"hello"), ("../../x.jpg", jpeg(3))))
        assert r.status_code == 200
        rows = r.json()["results"]
        assert rows[0]["error"] == "not an image (format not recognised)"  # the bytes sent, not the file named
        assert rows[1]["error"] is None and rows[1]["filename"] == "../../x.jpg"
        tmpdir = svc.tmpdir
        assert os.path.isdir(tmpdir) and os.listdir(tmpdir) == []
        assert oct(os.stat(tmpdir).st_mode & 0o777) == oct(0o700)
    assert not os.path.exists(tmpdir)  # removed at shutdown


def test_request_errors(model):
    with client_for(model, max_images=2) as c:
        assert c.post("/v1/score", content=b"{}", headers={"content-type": "application/json"}).status_code == 415
        r = c.post("/v1/score", content=b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filena",
                   headers={"content-type": "multipart/form-data; boundary=abc"})
        assert r.status_code == 400, r.text
        r = c.post("/v1/score", data={"field": "value"}, files=[("other", ("", b"", "text/plain"))])
        assert r.status_code == 400 and "part 1 ('field') is not a file part" in r.json()["detail"]  # no file
        r = c.post("/v1/score", content=b"--b--\r\n", headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 400 and "no image files" in r.json()["detail"]  # no part at all
        r = c.post("/v1/score", files=files(("empty.jpg", b"")))
        assert r.status_code == 200 and r.json()["results"][0]["error"] == "file is empty (0 bytes)"
        assert c.post("/v1/score", data={"field": "value"}).status_code == 415  # not multipart
        r = c.post("/v1/score", files=files(*[(f"{i}.jpg", jpeg(i)) for i in range(3)]))
        assert r.status_code == 413 and "at most 2" in r.json()["detail"]
        whole = multipart([("a.jpg", jpeg(1)), ("b.jpg", jpeg(2))])
        cut = whole[: whole.rindex(b"--cq-boundary--") - 100]  # b.jpg cut off, no closing boundary
        for body in (cut, cut[: cut.index(b"--cq-boundary", 10)]):
            r = c.post("/v1/score", content=body, headers={"content-type": "multipart/form-data; boundary=cq-boundary"})
            assert r.status_code == 400 and "closing boundary" in r.json()["detail"], r.text
        r = c.post("/v1/score", content=whole, headers={"content-type": 'multipart/form-data; boundary="cq-boundary"'})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        # the header written with spaces (as HTTP allows): read as the parser reads it, both ways
        for ctype in ("multipart/form-data; boundary=cq-boundary ; charset=UTF-8", "multipart/form-data; boundary = cq-boundary"):
            r = c.post("/v1/score", content=whole, headers={"content-type": ctype})
            assert r.status_code == 200 and len(r.json()["results"]) == 2, (ctype, r.text)
            r = c.post("/v1/score", content=cut, headers={"content-type": ctype})
            assert r.status_code == 400 and "closing boundary" in r.json()["detail"], (ctype, r.text)
        # the closing line present but not where the parser closes a part (after CRLF), a cut-off
        # upload whose payload holds the closing line's bytes, and an empty boundary: each lost
        # the last photo with a 200
        end = whole.rindex(b"\r\n--cq-boundary--")
        for body, boundary in ((whole[:end] + whole[end + 2:], "cq-boundary"),
                               (whole[:end] + b"\n" + whole[end + 2:], "cq-boundary"),
                               (cut + b"--cq-boundary--" + jpeg(3)[:300], "cq-boundary"),
                               (cut.replace(b"--cq-boundary", b"--"), "")):
            r = c.post("/v1/score", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
            assert r.status_code == 400 and "closing boundary" in r.json()["detail"], r.text


def test_body_size_and_pixel_limits(model):
    with client_for(model, max_upload_bytes=20_000, max_pixels=1_000_000) as c:
        r = c.post("/v1/score", files=files(("big.jpg", jpeg(4, size=(400, 400), quality=100))))
        assert r.status_code == 413 and "MiB" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit is counted while reading
            for _ in range(10):
                yield b"x" * 5000

        r = c.post("/v1/score", content=chunks(), headers={"content-type": "multipart/form-data; boundary=abc"})
        assert r.status_code == 413
        r = c.post("/v1/score", files=files(("bomb.png", big_png(2000, 1000)), ("ok.jpg", jpeg(5))))
        assert r.status_code == 200
        rows = r.json()["results"]
        assert "decompression-bomb guard" in rows[0]["error"] and rows[0]["score"] is None
        # advice a client can follow: not the library's "raise max_pixels" (issue 22)
        assert "max_pixels" not in rows[0]["error"] and "send a smaller photo" in rows[0]["error"]
        assert rows[1]["error"] is None
        r = c.post("/v1/explain", files={"file": ("bomb.png", big_png(2000, 1000), "image/png")})
        assert r.status_code == 422 and "send a smaller photo" in r.json()["detail"]


def test_api_key_on_every_v1_call_and_nowhere_else(model):
    with client_for(model, api_key="s3cret") as c:
        for method, path in (("post", "/v1/score"), ("post", "/v1/explain"), ("get", "/v1/models")):
            kw = {"files": files(("a.jpg", jpeg()))} if method == "post" else {}
            assert getattr(c, method)(path, **kw).status_code == 401
            assert getattr(c, method)(path, headers={"X-API-Key": "wrong"}, **kw).status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        r = c.post("/v1/score", headers={"X-API-Key": "s3cret"}, files=files(("a.jpg", jpeg())))
        assert r.status_code == 200 and r.json()["results"][0]["score"] is not None
        assert c.get("/healthz").status_code == 200
        assert c.get("/").status_code == 200
        # health checkers probe with HEAD too: same status, no body
        for path in ("/healthz", "/"):
            r = c.head(path)
            assert r.status_code == 200 and r.content == b""


def test_cors_off_unless_asked(model):
    pre = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}
    with client_for(model) as c:
        r = c.options("/v1/score", headers=pre)
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": pre["Origin"]}).headers
    with client_for(model, cors_origins=("https://elsewhere.example",)) as c:
        r = c.options("/v1/score", headers=pre)
        assert r.headers.get("access-control-allow-origin") == "https://elsewhere.example"


def test_queue_full_answers_503_with_retry_after(model):
    # one image runs (the model held), two wait: a request of two more passes max_queue 3
    app = create_app(ServeConfig(max_queue=3, max_images=3, max_batch=1), model=loaded(model))
    svc = app.state.service
    real, release, calls = svc._run_batch, threading.Event(), []

    def held(images):
        calls.append(len(images))
        if len(calls) > 1:  # the warm-up passes; then the model runs until released
            release.wait(30)
        return real(images)

    svc._run_batch = held
    with TestClient(app) as c:
        answers = {}

        def post(name, n):
            answers[name] = c.post("/v1/score", files=files(*[(f"{name}{i}.jpg", jpeg(i)) for i in range(n)]))

        def until(ready):
            t = time.monotonic()
            while not ready() and time.monotonic() - t < 20:
                time.sleep(0.01)
            assert ready()

        first, second = threading.Thread(target=post, args=("a", 1)), threading.Thread(target=post, args=("b", 2))
        first.start()
        until(lambda: len(calls) == 2)
        second.start()
        until(lambda: svc.batcher.depth == 2)
        r = c.post("/v1/score", files=files(*[(f"{i}.jpg", jpeg(i)) for i in range(2)]))
        release.set()
        first.join(30), second.join(30)
        assert r.status_code == 503 and "queue full (2 images waiting)" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        assert answers["a"].status_code == answers["b"].status_code == 200
        assert c.post("/v1/score", files=files(("a.jpg", jpeg()))).status_code == 200
        assert 'contentiqa_errors_total{reason="queue_full"} 1.0' in c.get("/metrics").text


def test_timeout_answers_504_and_drops_the_work(model):
    # The deadline covers reading the body too (408): it is long enough that a loaded machine's
    # stall before the upload is read does not reach it, and the "hang" far beyond it.
    app = create_app(ServeConfig(timeout_s=1.0), model=loaded(model))
    svc = app.state.service
    real = svc._run_batch
    calls = []

    def slow(images):
        calls.append(len(images))
        if len(calls) > 2:  # the warm-up and one real request pass; then the model "hangs"
            time.sleep(3.0)
        return real(images)

    svc._run_batch = slow
    with TestClient(app) as c:
        assert c.post("/v1/score", files=files(("a.jpg", jpeg()))).status_code == 200  # first-request work done
        t = time.monotonic()
        r = c.post("/v1/score", files=files(("a.jpg", jpeg())))
        assert r.status_code == 504 and time.monotonic() - t < 2.5
        text = c.get("/metrics").text
        assert 'contentiqa_errors_total{reason="timeout"} 1.0' in text
        assert 'contentiqa_images_total{outcome="timeout"} 1.0' in text  # its image was lost from the count


def test_the_multipart_parsers_warnings_go_through_the_servers_log_config():
    """They came as bare stderr lines (no time, client or request) for each malformed body."""
    from contentiqa.cli.serve import _log_config

    config = _log_config("info")  # applied by uvicorn; not here, where it would change every later test's logging
    for name in ("python_multipart", "multipart"):  # the module's name since python-multipart 0.0.13, and before
        assert config["loggers"][name] == {"handlers": ["default"], "level": "ERROR", "propagate": False}


def test_a_clients_error_rows_give_advice_a_client_can_follow(model):
    """The library's advice names its own attributes, the CLI's its options: neither is the client's to change."""
    buf = io.BytesIO()
    Image.new("RGB", (6144, 40), (120, 90, 60)).save(buf, "PNG")
    with client_for(model) as c:
        error = c.post("/v1/score", files=files(("thin.png", buf.getvalue()))).json()["results"][0]["error"]
    assert error.endswith("this server downscales photos to that longest side") and "max_side" not in error


def test_an_unreadable_image_beside_a_timed_out_one_is_counted(model):
    """Decoded on the decoding threads, an unreadable upload's error was counted only once the
    rest was scored: a request that then timed out lost it from the images metric."""
    app = create_app(ServeConfig(timeout_s=1.0, decode_workers=2), model=loaded(model))
    svc = app.state.service
    with TestClient(app) as c:
        real = svc.batcher.run_batch
        svc.batcher.run_batch = lambda items: (time.sleep(1.5), real(items))[1]
        r = c.post("/v1/score", files=files(("bad.txt", b"not an image"), ("good.jpg", jpeg(1))))
        assert r.status_code == 504
        text = c.get("/metrics").text
    assert 'contentiqa_images_total{outcome="timeout"} 1.0' in text
    assert 'contentiqa_images_total{outcome="error"} 1.0' in text


def test_each_answer_carries_a_request_id_and_the_log_names_the_files_not_scored(model, caplog):
    with client_for(model) as c, caplog.at_level(logging.INFO, logger="contentiqa"):
        r = c.post("/v1/score", files=files(("a.jpg", jpeg()), ("b.txt", b"nope")),
                   headers={"X-Request-ID": "proxy-42.a:b"})
        assert r.status_code == 200 and r.headers["X-Request-ID"] == "proxy-42.a:b"
        line = next(m for m in caplog.messages if "not scored" in m)
        assert line == "request proxy-42.a:b: 1 of 2 image(s) not scored: 'b.txt': 'not an image (format not recognised)'"
        forged = c.get("/healthz", headers={"X-Request-ID": "x\tinjected"}).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", forged)  # not a plain token: a new id, not the client's text
        assert c.get("/nowhere").headers["X-Request-ID"] != forged  # each request its own


def test_decoding_stops_at_the_deadline_and_drops_what_has_not_started(model, caplog):
    """Many large uploads in one request: their decoding (threads beside the model) ran to the end
    whatever the deadline, keeping the cores busy for a client that had given up. It now answers
    504 at the deadline, and decodes that have not started are dropped."""
    app = create_app(ServeConfig(timeout_s=1.0, decode_workers=1, max_images=16), model=loaded(model))
    svc = app.state.service
    real = svc.decode_for_scoring
    started = []

    def slow(data):
        started.append(1)
        time.sleep(0.4)
        return real(data)

    with TestClient(app) as c:
        svc.decode_for_scoring = slow
        t = time.monotonic()
        r = c.post("/v1/score", files=files(*[(f"{i}.jpg", jpeg(i)) for i in range(12)]))
        took = time.monotonic() - t
        assert r.status_code == 504 and "within the request timeout" in r.json()["detail"]
        assert took < 2.5  # not the 12 x 0.4 s the decodes would take
        time.sleep(0.5)
        assert len(started) <= 5  # the one running finished; the rest never started
        import gc

        gc.collect()  # the cancelled decodes' future is reported (or not) when it is collected
        assert not [r for r in caplog.records if r.name == "asyncio"]  # an ordinary 504, not an error-level traceback
        svc.decode_for_scoring = real
        assert c.post("/v1/score", files=files(("a.jpg", jpeg()))).status_code == 200


def test_a_client_that_stops_reading_is_dropped_after_the_deadline(model, monkeypatch):
    """A client that never reads its answer (a big static file, pipelined, a tiny receive window)
    held one of --max-connections for good: sending now has the request's deadline plus a grace,
    then the connection is dropped and counted."""
    import asyncio

    import contentiqa.serve.app as serve_app

    monkeypatch.setattr(serve_app, "SEND_GRACE_S", 0.3)
    svc = create_app(ServeConfig(timeout_s=0.2), model=loaded(model)).state.service
    sent = []

    async def answer(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": False})

    async def never_read(message):
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            await asyncio.sleep(3600)  # the socket's buffers are full: the write never completes

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "path": "/docs-assets/swagger-ui-bundle.js", "headers": [], "client": ("127.0.0.1", 9)}
    t = time.monotonic()
    asyncio.run(asyncio.wait_for(serve_app.RequestGuard(answer, svc)(scope, receive, never_read), 10))
    assert time.monotonic() - t < 2 and sent == ["http.response.start", "http.response.body"]
    assert 'contentiqa_errors_total{reason="send_timeout"} 1.0' in svc.metrics.render().decode()


def test_an_error_row_shows_no_server_folder(model, monkeypatch):
    """A reader's message can name other files than the upload (a helper program's temporary
    output): the client gets none of the server's folders."""
    import tempfile

    import contentiqa.serve.app as serve_app

    def failing(path, scorer):
        return None, None, [], f"{path}: cannot read it (wrote {tempfile.gettempdir()}/tmpq1w2e3r4 and {Path(path).parent}/x)"

    monkeypatch.setattr(serve_app, "load_image_safely", failing)
    with client_for(model) as c:
        row = c.post("/v1/score", files=files(("a.jpg", jpeg()))).json()["results"][0]
    assert row["error"].startswith("<upload>: cannot read it") and tempfile.gettempdir() not in row["error"], row


def test_dynamic_batching_across_concurrent_requests(model):
    app = create_app(ServeConfig(max_batch=8, max_wait_ms=400), model=loaded(model))
    with TestClient(app) as c:
        before = _metric(c, "contentiqa_batch_size_count")
        before_images = _metric(c, "contentiqa_batch_size_sum")
        results = [None] * 4

        def post(k):
            results[k] = c.post("/v1/score", files=files((f"{k}.jpg", jpeg(k))))

        threads = [threading.Thread(target=post, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.status_code == 200 and r.json()["results"][0]["error"] is None for r in results)
        batches = _metric(c, "contentiqa_batch_size_count") - before
        assert _metric(c, "contentiqa_batch_size_sum") - before_images == 4
        assert batches < 4, f"4 concurrent requests ran in {batches} forward passes: not batched"


def _metric(c: TestClient, name: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exported")


def test_metrics_count_requests_images_errors_latency_queue_and_batches(model):
    with client_for(model) as c:
        c.post("/v1/score", files=files(("a.jpg", jpeg()), ("b.txt", b"nope")))
        text = c.get("/metrics").text
    assert 'contentiqa_requests_total{endpoint="/v1/score",status="200"} 1.0' in text
    assert 'contentiqa_images_total{outcome="scored"} 1.0' in text
    assert 'contentiqa_images_total{outcome="error"} 1.0' in text
    assert 'contentiqa_errors_total{reason="bad_image"} 1.0' in text
    assert 'contentiqa_request_latency_seconds_count{endpoint="/v1/score"} 1.0' in text
    assert "contentiqa_queue_depth 0.0" in text
    assert "contentiqa_batch_size_bucket" in text and "contentiqa_model_ready 1.0" in text
    assert "contentiqa_batch_size_count 1.0" in text  # the client's batch: the warm-up is no one's


def test_healthz_ready_only_once_loaded_and_says_why_not(model):
    gate = threading.Event()

    def loader():
        assert gate.wait(10)
        return loaded(model)

    app = create_app(ServeConfig(), loader=loader)
    with TestClient(app) as c:
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/v1/score", files=files(("a.jpg", jpeg())))
        assert r.status_code == 503 and r.headers["retry-after"]
        gate.set()
        assert app.state.service.ready_event.wait(10)
        assert c.get("/healthz").json()["status"] == "ready"
        assert c.post("/v1/score", files=files(("a.jpg", jpeg()))).status_code == 200

    errors = []

    def broken():
        raise ValueError("checkpoint x.pt does not exist")

    app = create_app(ServeConfig(), loader=broken, on_load_error=errors.append)
    with TestClient(app) as c:
        assert app.state.service.ready_event.wait(10)
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json() == {"status": "failed", "error": "checkpoint x.pt does not exist"}
    assert len(errors) == 1
    # behind an API key, the open /healthz does not tell anyone the server's paths
    app = create_app(ServeConfig(api_key="k"), loader=broken, on_load_error=errors.append)
    with TestClient(app) as c:
        assert app.state.service.ready_event.wait(10)
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "x.pt" not in r.text


def test_an_empty_heatmap_is_said_by_a_header_and_the_page_captions_the_maps_target(model, monkeypatch):
    """The CLI, figure and report say an empty map; /v1/explain drew it flat with no word, and the
    page captioned a content-only model's category map "(quality)"."""
    import contentiqa.explain.explanation as explanation

    with client_for(model) as c:
        r = c.post("/v1/explain?target=quality", files=files(("a.jpg", jpeg(6))))
        assert r.status_code == 200 and "X-Heatmap-Empty" not in r.headers
        real = explanation.compute_gradcam

        def zero_quality(*a, **k):
            g = real(*a, **k)
            g.cams["quality"] = np.zeros_like(g.cams["quality"])
            return g

        monkeypatch.setattr(explanation, "compute_gradcam", zero_quality)
        r = c.post("/v1/explain?target=quality", files=files(("a.jpg", jpeg(6))))
        assert r.status_code == 200 and r.headers["X-Heatmap-Empty"] == "quality"
        script = c.get("/static/app.js").text
        assert 'res.headers.get("X-Heatmap-Empty")' in script and "where the model looked (${target})" in script


def test_explain_returns_heatmap_png(model):
    with client_for(model) as c:
        score = c.post("/v1/score", files=files(("a.jpg", jpeg(6)))).json()["results"][0]
        for target in ("quality", "category", "both"):
            r = c.post(f"/v1/explain?target={target}&max_size=64", files={"file": ("a.jpg", jpeg(6), "image/jpeg")})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
            assert float(r.headers["x-score"]) == pytest.approx(score["score"], abs=1e-3)
            assert r.headers["x-category"] == score["category"]
            im = Image.open(io.BytesIO(r.content))
            if target != "both":
                assert max(im.size) == 64
        r = c.post("/v1/explain", files={"file": ("x.txt", b"nope", "text/plain")})
        assert r.status_code == 422 and "not an image" in r.json()["detail"]
        # images sent for scoring only: the explanations' counted nowhere else (an abandoned one
        # counted as an abandoned image, where its scored ones never were)
        images = [line for line in c.get("/metrics").text.splitlines() if line.startswith("contentiqa_images_total")]
        assert images == ['contentiqa_images_total{outcome="scored"} 1.0'], images
        r = c.post("/v1/explain", files=files(("a.jpg", jpeg()), ("b.jpg", jpeg(1))))
        assert r.status_code == 413
        assert c.post("/v1/explain?target=nonsense", files={"file": ("a.jpg", jpeg(), "image/jpeg")}).status_code == 422


def test_explain_reports_the_score_of_the_served_runtime(model):
    """/v1/explain's X-Score and X-Category are /v1/score's for the same photo, from the runtime
    and precision served (here PyTorch under bf16 autocast, whose scores differ from fp32's);
    the heatmap is PyTorch's (issue 22: explain reported fp32 beside an int8 /v1/score)."""
    from contentiqa.inference.torch_runtime import TorchScorer

    served = LoadedModel(TorchScorer(model, spec="tiny", precision="bf16"), explainer=model)
    with TestClient(create_app(ServeConfig(), model=served)) as c:
        for seed in (6, 7, 8):
            photo = jpeg(seed, size=(72, 90))
            row = c.post("/v1/score", files=files(("a.jpg", photo))).json()["results"][0]
            r = c.post("/v1/explain?target=quality&max_size=64", files={"file": ("a.jpg", photo, "image/jpeg")})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert float(r.headers["x-score"]) == row["score"] and r.headers["x-category"] == row["category"]


def test_models_and_docs(model):
    with client_for(model, max_images=5) as c:
        body = c.get("/v1/models").json()
        assert body["models"][0]["categories"] == list(model.categories)
        assert body["limits"]["max_images"] == 5
        spec = c.get("/openapi.json").json()
        assert {"/v1/score", "/v1/explain", "/v1/models", "/healthz", "/metrics"} <= set(spec["paths"])
        assert "multipart/form-data" in spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
        assert c.get("/docs").status_code == 200


def test_api_docs_work_offline(model):
    """/docs and /redoc load their scripts, styles and icon from this server: the pages name no
    other host, and what they name is served (issue 22: /docs was blank offline)."""
    import re

    with client_for(model) as c:
        for page in ("/docs", "/redoc"):
            html = c.get(page).text
            assert "http://" not in html and "https://" not in html and not re.search(r"[\x27\"(]//", html)
            assets = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert len(assets) >= 2
            for url in assets:
                r = c.get(url)
                assert r.status_code == 200 and len(r.content) > 100, url
        assert '"validatorUrl": null' in c.get("/docs").text  # Swagger's online validator is not asked either


def test_page_and_its_assets_are_local(model):
    with client_for(model) as c:
        r = c.get("/")
        html = r.text
        assert '<input id="file-input" type="file"' in html
        # its own script and style only, and not framed by another site; the page keeps to it
        # (no inline script or style, which the policy would block)
        policy = r.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert r.headers["x-content-type-options"] == "nosniff"
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/app.js">']
        assert "<style" not in html and " style=" not in html
        for asset in ("/static/app.js", "/static/style.css"):
            r = c.get(asset)
            assert r.status_code == 200 and len(r.text) > 100
        everything = html + c.get("/static/app.js").text + c.get("/static/style.css").text
    assert "http://" not in everything and "https://" not in everything  # no CDN: works offline


def test_onnx_runtime_serves_the_same_scores(ckpt, model, tmp_path, monkeypatch):
    from contentiqa.cli.serve import _loader

    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))
    kwargs = dict(spec=ckpt, runtime="onnx", precision=None, device="cpu", threads=None)
    images = files(("a.jpg", jpeg(11)), ("b.jpg", jpeg(12, size=(70, 90))))
    with client_for(model) as c:
        torch_rows = c.post("/v1/score", files=images).json()["results"]
    with TestClient(create_app(ServeConfig(), loader=_loader(kwargs))) as c:
        assert c.app.state.service.ready_event.wait(120)
        body = c.post("/v1/score", files=images).json()
    assert body["model"]["runtime"] == "onnx" and body["model"]["precision"] == "fp32"
    assert [r["score"] for r in body["results"]] == pytest.approx([r["score"] for r in torch_rows], abs=1e-3)
    assert [r["category"] for r in body["results"]] == [r["category"] for r in torch_rows]


def test_without_a_pytorch_model_the_page_and_api_say_why_there_are_no_heatmaps(ckpt, tmp_path, monkeypatch):
    """A server whose scorer runs from an ONNX file alone (or an install without PyTorch) scores,
    answers /v1/explain with 501 and the reason, and the page shows that reason."""
    from contentiqa.cli.serve import _loader
    from contentiqa.inference.onnx import export_onnx

    graph = export_onnx(tiny_model("iqa-cr", seed=5), tmp_path / "tiny.onnx", verify=False)
    kwargs = dict(spec=str(graph), runtime="auto", precision=None, device="cpu", threads=None)
    with TestClient(create_app(ServeConfig(), loader=_loader(kwargs))) as c:
        assert c.app.state.service.ready_event.wait(120)
        ident = c.get("/v1/models").json()["models"][0]
        assert ident["explain"] is False and "ONNX file" in ident["explain_note"]
        assert c.post("/v1/score", files=files(("a.jpg", jpeg(3)))).json()["results"][0]["score"] is not None
        r = c.post("/v1/explain", files={"file": ("a.jpg", jpeg(3), "image/jpeg")})
        assert r.status_code == 501 and ident["explain_note"] in r.json()["detail"]
        page = c.get("/").text + c.get("/static/app.js").text
    assert 'id="explain-note"' in page and "explain_note" in page
    import contentiqa.inference.scorer as scorer_mod
    import contentiqa.utils.extras as extras

    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))
    scorer_mod.load_scorer(ckpt)  # exported to the cache: from now on it loads without PyTorch
    real_have = extras.have
    for mod in (extras, scorer_mod):  # as in an install without PyTorch
        monkeypatch.setattr(mod, "have", lambda m: False if m == "torch" else real_have(m))
    no_torch = _loader(dict(kwargs, spec=ckpt))()
    assert no_torch.explainer is None and "contentiqa[torch]" in no_torch.explain_note
    assert no_torch.scorer.identity.runtime == "onnx"


# -- the batcher -----------------------------------------------------------------------------
def test_batcher_batches_concurrent_jobs_and_keeps_order():
    seen: list[list[int]] = []

    def run(items):
        seen.append(list(items))
        return [x * 10 for x in items]

    b = Batcher(run, max_batch=5, max_wait_s=0.3, max_queue=100)
    try:
        futs = [b.submit([1, 2]), b.submit([3]), b.submit([4, 5, 6])]
        b.start()  # all three queued first: what batches them is the queue, not the clock
        assert [f.result(5) for f in futs] == [[10, 20], [30], [40, 50, 60]]
        assert seen[0] == [1, 2, 3, 4, 5] and seen[1] == [6]  # one pass for the first five, max_batch respected
    finally:
        b.close(5)


def test_batcher_bounded_queue_cancel_failure_and_exclusive_calls():
    gate = threading.Event()
    running = threading.Event()
    calls: list[str] = []

    def run(items):
        calls.append(f"batch{len(items)}")
        running.set()
        assert gate.wait(5)
        if "boom" in items:
            raise RuntimeError("model failed")
        return items

    b = Batcher(run, max_batch=2, max_wait_s=0.0, max_queue=4).start()
    try:
        first = b.submit(["a"])
        assert running.wait(5)  # the worker holds "a"; the queue is empty again
        second = b.submit(["b", "c"])
        with pytest.raises(QueueFull) as err:
            b.submit(["d", "e", "f"])
        assert err.value.retry_after >= 1
        with pytest.raises(QueueFull):
            b.check(3)  # the same answer before anything is queued (or decoded)
        b.check(2)
        dropped = b.submit(["x"])
        b.cancel(dropped)  # the client gave up: its image never reaches the model
        task = b.call(lambda: calls.append("task") or "done")
        failing = b.submit(["boom"])
        gate.set()
        assert first.result(5) == ["a"] and second.result(5) == ["b", "c"] and task.result(5) == "done"
        with pytest.raises(RuntimeError, match="model failed"):
            failing.result(5)
        assert dropped.cancelled()
        assert calls == ["batch1", "batch2", "task", "batch1"]  # the task ran alone, between batches
        assert b.submit(["z"]).result(5) == ["z"]  # the worker survived the failure
    finally:
        gate.set()
        b.close(5)


def test_batcher_refuses_at_once_what_would_time_out():
    gate = threading.Event()

    def run(items):
        time.sleep(0.05 * len(items))
        assert gate.wait(5)
        return items

    b = Batcher(run, max_batch=1, max_wait_s=0.0, max_queue=100).start()
    try:
        gate.set()
        b.submit([0]).result(5)  # measures ~0.05 s per image
        gate.clear()
        held = [b.submit([1]), b.submit([2]), b.submit([3]), b.submit([4])]
        with pytest.raises(QueueFull, match="longer than the request timeout"):
            b.submit([5], within_s=0.1)  # 4+ images ahead at 0.05 s each
        later = b.submit([6], within_s=10.0)
        gate.set()
        assert [f.result(5) for f in held + [later]] == [[1], [2], [3], [4], [6]]
    finally:
        gate.set()
        b.close(5)


def test_batcher_prices_an_exclusive_task_by_its_own_measured_time():
    """An explanation counted as one image's time (~0.05 s here, seconds in truth): a score request
    was let in behind explanations and timed out (504) instead of a 503 with Retry-After."""
    gate = threading.Event()

    def slow_task():
        time.sleep(0.3)
        assert gate.wait(5)
        return "png"

    b = Batcher(lambda items: (time.sleep(0.01), items)[1], max_batch=4, max_wait_s=0.0, max_queue=100).start()
    try:
        gate.set()
        b.submit([0]).result(5)
        assert b.call(slow_task).result(5) == "png"  # measures ~0.3 s a task
        gate.clear()
        held = [b.call(slow_task), b.call(slow_task)]
        with pytest.raises(QueueFull, match=r"longer than the request timeout \(0 image\(s\) and 2 explanation\(s\)"):
            b.submit([1], within_s=0.4)  # two explanations ahead: ~0.6 s, not 2 images' 0.02 s
        with pytest.raises(QueueFull, match="longer than the request timeout"):
            b.call(slow_task, within_s=0.4)
        assert b.retry_after() >= 1 and b.expected_wait() >= 0.5
        gate.set()
        assert [f.result(5) for f in held] == ["png", "png"]
    finally:
        gate.set()
        b.close(5)


def test_batcher_close_finishes_queued_work_then_refuses():
    from contentiqa.serve.batching import BatcherClosed

    b = Batcher(lambda items: [i + 1 for i in items], max_batch=4, max_wait_s=0.5).start()
    fut = b.submit([1, 2])
    b.close(5)
    assert fut.result(0) == [2, 3]
    with pytest.raises(BatcherClosed):
        b.submit([3])


@pytest.mark.parametrize("field, value, said", [
    ("max_queue", 2, r"max_queue \(2\) must be at least max_images \(16\)"), ("timeout_s", -1, "timeout_s must be positive"),
    ("max_images", 0, "max_images must be at least 1"), ("max_upload_bytes", 0, "max_upload_bytes must be at least 1 KiB"),
    ("max_wait_ms", 60_000, "max_wait_ms must be 0 or more and below timeout_s"), ("api_key", "", "api_key is empty"),
    ("max_pixels", 0, "max_pixels must be at least one pixel"), ("decode_workers", -1, "decode_workers must be 0 or more"),
])
def test_a_config_no_server_can_work_with_is_refused(field, value, said):
    """The library's ServeConfig checked nothing: a queue under max_images answered "busy, 0 images
    waiting, retry in 1 s" to every request, a limit of 0 bytes refused every upload."""
    with pytest.raises(ValueError, match=said):
        ServeConfig(**{field: value})


# -- the command -----------------------------------------------------------------------------
def test_serve_command_checks_its_arguments(capsys):
    from contentiqa.cli.main import main

    assert main(["serve", "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err
    assert main(["serve", "--model", "no-such-model", "--port", "0", "--log-level", "error"]) == 2
    assert "error: unknown model 'no-such-model'" in capsys.readouterr().err  # before the server starts
    assert main(["serve", "--model", "missing/ckpt.pt"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--api-key", "pässwort", "--model", "missing/ckpt.pt"]) == 2  # clients could never send it
    assert "must be printable ASCII" in capsys.readouterr().err
    # a request of --max-images photos could never be admitted: "busy, retry in 1 s" on every retry
    assert main(["serve", "--max-queue", "2", "--model", "missing/ckpt.pt"]) == 2
    assert "--max-queue (2) must be at least --max-images (16)" in capsys.readouterr().err
    # each refused in its own words: a timeout of 0 was blamed on --max-wait-ms; a wait as long as the
    # timeout timed out every lone request; limits rounding to 0 refused every upload; a key with
    # spaces around it can never be sent (HTTP strips them), and the variable's was not checked
    for argv, said in ((["--timeout", "0"], "--timeout must be positive"),
                       (["--timeout", "2", "--max-wait-ms", "2000"], "--max-wait-ms must be 0 or more and below --timeout"),
                       (["--max-upload-mb", "1e-9"], "--max-upload-mb must be at least 1 KiB"),
                       (["--max-pixels", "1e-9"], "--max-pixels must be at least one pixel"),
                       (["--api-key", "abc "], "--api-key is empty or starts or ends with spaces")):
        assert main(["serve", *argv, "--model", "missing/ckpt.pt"]) == 2
        assert f"error: {said}" in capsys.readouterr().err, argv
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTENTIQA_API_KEY", " ")
        assert main(["serve", "--model", "missing/ckpt.pt"]) == 2
        assert "CONTENTIQA_API_KEY is empty or starts or ends with spaces" in capsys.readouterr().err
    # an origin with a path or a trailing slash never matches what a browser sends: refused, not ignored
    for bad in ("https://photos.example.org/", "photos.example.org", "https://x.org/app"):
        assert main(["serve", "--cors-origin", bad, "--model", "missing/ckpt.pt"]) == 2
        assert f"--cors-origin {bad!r} is not an origin" in capsys.readouterr().err
    for good in ("http://localhost:8080", "chrome-extension://abcdefghijklmnop", "null", "http://[::1]:8080", "*"):
        assert main(["serve", "--cors-origin", good, "--model", "missing/ckpt.pt"]) == 2
        assert "does not exist" in capsys.readouterr().err, good  # the origin passed; the model is what is missing


def test_cli_help_does_not_import_the_web_stack():
    code = ("import sys; from contentiqa.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


# -- a real server process ---------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _http(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send raw bytes, read the whole answer: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        return _read_response(s)


def _read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def multipart(parts: list[tuple[str, bytes]], boundary: str = "cq-boundary") -> bytes:
    out = b""
    for name, data in parts:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def post_request(path: str, body: bytes, boundary: str = "cq-boundary", length: int | None = None) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


def _serve(argv: list[str], log, env: dict) -> tuple[subprocess.Popen, int]:
    """``contentiqa serve ARGV --port 0`` with its output in ``log`` (an open file): the process
    and the port the system gave it, read from the line serve prints once it holds the port
    (a port chosen here and bound there could be taken in between by another test's client)."""
    proc = subprocess.Popen([sys.executable, "-m", "contentiqa", "serve", *argv, "--port", "0"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    t = time.monotonic()
    while time.monotonic() - t < 120:
        found = re.search(r"loading; http://127\.0\.0\.1:(\d+)/", Path(log.name).read_text())
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {Path(log.name).read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not say its port in time")


def _wait_ready(port: int, proc: subprocess.Popen, limit: float = 120.0) -> None:
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            status, _, _ = _http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("server not ready in time")


ORT_SESSION_FILE = ".ses"
"""A file ONNX Runtime itself writes into the temporary folder when it creates a session (the
service's default runtime on a CPU): not the service's."""


def test_real_server_slow_and_vanishing_clients_then_graceful_sigterm(ckpt, tmp_path):
    log = open(tmp_path / "server.log", "w+")
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    proc, port = _serve(["--model", ckpt, "--timeout", "2", "--max-wait-ms", "1500", "--threads", "1", "--log-level", "info"],
                        log, {**_env(), "TMPDIR": str(server_tmp)})
    try:
        _wait_ready(port, proc)
        ours = [p for p in server_tmp.iterdir() if p.name != ORT_SESSION_FILE]
        assert [p.name[:17] for p in ours] == ["contentiqa-serve-"]
        body = multipart([("a.jpg", jpeg(7))])
        status, _, answer = _http(port, post_request("/v1/score", body))
        assert status == 200 and json.loads(answer)["results"][0]["score"] is not None

        # A client that trickles its body is cut off at the deadline (--timeout 2), not held forever.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(post_request("/v1/score", b"", length=len(body)))
            t = time.monotonic()
            s.settimeout(0.05)
            sent, status = 0, None
            while time.monotonic() - t < 8:
                try:
                    s.sendall(body[sent:sent + 10])
                    sent += 10
                    s.settimeout(0.3)
                    status, _, _ = _read_response(s)
                    break
                except (socket.timeout, TimeoutError):
                    continue
            assert status == 408 and time.monotonic() - t < 5

        # A client that disconnects mid-upload costs nothing; the server stays up.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(post_request("/v1/score", body[: len(body) // 2], length=len(body)))
        status, _, _ = _http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 200

        # A client that disconnects once its upload is sent, while it waits for a batch (--max-wait-ms
        # 1500): its image is not scored, and that is counted and logged (issue 22).
        def counts() -> tuple[float, float, float]:
            text = _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[2].decode()
            def value(name: str) -> float:
                return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))
            return (value('contentiqa_images_total{outcome="scored"}'), value('contentiqa_images_total{outcome="abandoned"}'),
                    value("contentiqa_batch_size_count"), value("contentiqa_queue_depth"))
        before = counts()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(post_request("/v1/score", multipart([("gone.jpg", jpeg(9))])))
            t = time.monotonic()
            while counts()[3] < 1 and time.monotonic() - t < 1.2:  # read and queued (the batch waits 1.5 s)
                time.sleep(0.02)
        time.sleep(2.0)  # past the batch's wait: it would have run by now
        scored, abandoned, batches, _ = counts()
        assert (scored, abandoned, batches) == (before[0], before[1] + 1, before[2]), (before, counts())
        log.flush()
        assert "client gone before 1 image(s) of /v1/score were run" in (tmp_path / "server.log").read_text()

        # SIGTERM while a request waits in the batcher (--max-wait-ms 1500): it is finished.
        result: dict = {}

        def slow_request():
            result["answer"] = _http(port, post_request("/v1/score", multipart([("b.jpg", jpeg(8))])), timeout=20)

        waiting = counts()[3]
        t = threading.Thread(target=slow_request)
        t.start()
        started = time.monotonic()
        while counts()[3] <= waiting and time.monotonic() - started < 1.2:  # read and queued (the batch waits 1.5 s)
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        status, _, answer = result["answer"]
        assert status == 200 and json.loads(answer)["results"][0]["score"] is not None
        # uvicorn exits by re-raising the signal once it has shut down (as process managers expect)
        assert proc.wait(30) in (0, -signal.SIGTERM)
        # shut down cleanly: its upload folder is gone
        assert [p for p in server_tmp.iterdir() if p.name != ORT_SESSION_FILE] == []
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.seek(0)
        print(log.read()[-3000:])
        log.close()


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        while s.recv(4096):
            pass  # a keep-alive answer still being read
        return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:  # reset: closed too
        return True


def test_real_server_closes_silent_connections_and_refuses_a_busy_port(ckpt, tmp_path):
    """Silent sockets cannot hold --max-connections: a connection that has not sent its request
    headers within --header-timeout is closed, as is one that trickles them, or that trickles
    its next request after a keep-alive answer; then /healthz answers. A second server on the
    same port exits 2 (usage error) naming the address (issue 22)."""
    limit, header_timeout = 4, 2.0
    log = open(tmp_path / "server.log", "w+")
    proc, port = _serve(["--model", ckpt, "--runtime", "torch", "--threads", "1", "--max-connections", str(limit),
                         "--header-timeout", str(header_timeout), "--log-level", "warning"], log, _env())
    held: list[socket.socket] = []
    try:
        _wait_ready(port, proc)
        busy = subprocess.run([sys.executable, "-m", "contentiqa", "serve", "--model", ckpt, "--port", str(port)],
                              env=_env(), capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2, busy.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr and "Traceback" not in busy.stderr

        # --max-connections N lets N in: uvicorn counted the asking one among them (N - 1; 1 refused all)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(limit - 1)]
        assert _http(port, HEALTHZ, timeout=5)[0] == 200
        idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert _http(port, HEALTHZ, timeout=5)[0] == 503
        for s in idle:
            s.close()
        time.sleep(0.5)

        kept = socket.create_connection(("127.0.0.1", port), timeout=10)  # a keep-alive client ...
        held.append(kept)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(kept)[0] == 200
        kept.sendall(b"G")  # ... that starts its next request and stops
        trickler = socket.create_connection(("127.0.0.1", port), timeout=10)
        held.append(trickler)
        held += [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(limit + 8)]
        start = time.monotonic()
        assert _http(port, HEALTHZ, timeout=5)[0] == 503  # every slot is held
        status = None
        while time.monotonic() - start < header_timeout + 5:
            try:
                trickler.sendall(b"G")
            except OSError:
                pass
            try:
                status = _http(port, HEALTHZ, timeout=1.0)[0]
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(0.25)
        assert status == 200 and time.monotonic() - start < header_timeout + 5
        assert all(_closed_by_server(s, within=header_timeout + 2) for s in held)
        assert proc.poll() is None
    finally:
        for s in held:
            s.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.seek(0)
        print(log.read()[-3000:])
        log.close()


# -- the page in a real browser ----------------------------------------------------------------
def _chromium() -> str | None:
    """The system's Chromium ($CONTENTIQA_CHROMIUM first): Playwright's own browser download
    is not something a test may depend on."""
    if os.environ.get("CONTENTIQA_CHROMIUM"):
        return os.environ["CONTENTIQA_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def _page(app):
    """A browser page (Playwright driving the system's Chromium) beside ``app`` served on a free
    port: ``(page, url)``; skipped where either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                   "(pip install playwright)")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; or set CONTENTIQA_CHROMIUM)")
    import uvicorn

    sock = socket.socket()  # bound here and handed over: no other test can take the port in between
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        t = time.monotonic()
        while not server.started and time.monotonic() - t < 30:
            time.sleep(0.05)
        with sync_api.sync_playwright() as p:
            try:
                browser = p.chromium.launch(executable_path=browser_path, headless=True,
                                            args=["--no-sandbox", "--disable-gpu"])
            except Exception as exc:  # a browser build Playwright cannot drive
                pytest.skip(f"cannot start {browser_path} with Playwright: {str(exc).splitlines()[0]}")
            try:
                page = browser.new_page()
                # the page keeps to its own Content-Security-Policy: nothing it needs is blocked
                blocked: list[str] = []
                page.on("console", lambda m: blocked.append(m.text)
                        if m.type == "error" and "Content Security Policy" in m.text else None)
                yield page, f"http://127.0.0.1:{port}/"
                assert not blocked, blocked
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(30)


def _wait(page, condition: str, timeout: float = 5_000) -> None:
    """Wait until the page's ``condition`` holds. Playwright's wait_for_function compiles its
    text inside the page, which the page's Content-Security-Policy (no eval) forbids;
    ``evaluate`` runs it from outside."""
    end = time.monotonic() + timeout / 1000
    while not page.evaluate(condition):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(0.05)


def test_page_scores_a_photo_in_a_real_browser(model, tmp_path):
    photos = {}
    for name, seed in (("first.jpg", 9), ("second.jpg", 1)):
        photos[name] = tmp_path / name
        photos[name].write_bytes(jpeg(seed, size=(120, 160)))
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "bomb.png").write_bytes(big_png(2000, 1000))
    # (the same limits: both apps set them on the one model object)
    with TestClient(create_app(ServeConfig(max_pixels=1_000_000), model=loaded(model))) as c:
        rows = c.post("/v1/score", files=files(*[(n, p.read_bytes()) for n, p in photos.items()])).json()["results"]
    expected = sorted(rows, key=lambda r: -r["score"])  # the page shows the best first
    assert abs(expected[0]["score"] - expected[1]["score"]) > 0.5  # so the order means something
    app = create_app(ServeConfig(api_key="s3cret", max_pixels=1_000_000), model=loaded(model))
    with _page(app) as (page, url):
        page.goto(url)
        info = "document.querySelector('#model-info').textContent"
        _wait(page, f"{info}.includes('needs an API key')")
        page.fill("#api-key", "wrong")  # a wrong key is said to be wrong (issue 22)
        page.click("#key-save")
        _wait(page, f"{info}.includes('refused this API key')")
        page.fill("#api-key", "s3cret")
        page.click("#key-save")
        _wait(page, f"{info}.includes('model')")
        page.set_input_files("#file-input", [str(p) for p in photos.values()]
                             + [str(tmp_path / "notes.txt"), str(tmp_path / "bomb.png")])
        _wait(page, "document.querySelectorAll('.card.done').length == 3", timeout=30_000)
        _wait(page, "document.querySelector('#status').textContent.includes('done')",
                               timeout=30_000)
        # the file that is not an image is named, not dropped silently (issue 22)
        assert "skipped notes.txt (not an image)" in page.text_content("#status")
        assert "2 of 3 photo(s) scored, 1 failed" in page.text_content("#status")  # the bomb is not "scored"
        names = [el.text_content() for el in page.query_selector_all(".card .name")]
        shown = [float(el.text_content()) for el in page.query_selector_all(".card:not(.failed) .score")]
        categories = [el.text_content() for el in page.query_selector_all(".card:not(.failed) .category")]
        assert names == [r["filename"] for r in expected] + ["bomb.png"]  # failed ones last
        assert shown == pytest.approx([r["score"] for r in expected], abs=0.006)
        assert all(r["category"] in c for r, c in zip(expected, categories))
        bomb = page.text_content(".card.failed .error")  # advice a web user can follow
        assert "send a smaller photo" in bomb and "max_pixels" not in bomb
        _wait(page, "document.querySelectorAll(\".card .heatmap[src^='blob:']\").length == 2",
                               timeout=30_000)  # both heatmaps arrived


def test_page_shows_a_content_only_models_categories_in_a_real_browser(tmp_path):
    """Every photo of a content-only model (a category, no score) was marked failed with a
    script error, and its heatmaps were asked for a quality map it does not have."""
    import torch

    from contentiqa.models import create_model

    torch.manual_seed(0)
    model = create_model("iqa-cr-c", pretrained=False, backbone_pretrained=False, dim=16, heads=2, mlp_dim=32,
                         grid=(2, 2), depth=1).eval()
    for name, seed in (("a.jpg", 3), ("b.jpg", 4)):
        (tmp_path / name).write_bytes(jpeg(seed, size=(120, 160)))
    (tmp_path / "bomb.png").write_bytes(big_png(2000, 1000))
    with _page(create_app(ServeConfig(max_pixels=1_000_000), model=loaded(model))) as (page, url):
        page.goto(url)
        _wait(page, "document.querySelector('#model-info').textContent.includes('model')")
        assert "content categories only" in page.text_content("#model-info")
        page.set_input_files("#file-input", [str(tmp_path / n) for n in ("bomb.png", "a.jpg", "b.jpg")])
        _wait(page, "document.querySelector('#status').textContent.includes('done')", timeout=30_000)
        assert "2 of 3 photo(s) scored, 1 failed" in page.text_content("#status")
        assert [el.text_content() for el in page.query_selector_all(".card .name")] == ["a.jpg", "b.jpg", "bomb.png"]
        assert all(el.text_content() for el in page.query_selector_all(".card:not(.failed) .category"))
        _wait(page, "document.querySelectorAll(\".card .heatmap[src^='blob:']\").length == 2",
                               timeout=30_000)


def _captured_loader(monkeypatch, tmp_path):
    import uvicorn

    import contentiqa.serve.app as app_mod

    captured = {}
    real_create_app = app_mod.create_app

    def fake_create_app(cfg, loader=None, **kw):
        captured["loader"] = loader
        return real_create_app(cfg, loader=loader, **kw)

    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(app_mod, "create_app", fake_create_app)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: None)  # parse, check, build; do not listen
    return captured


def test_serve_defaults_to_onnx_runtime_on_the_cpu(ckpt, tmp_path, monkeypatch):
    """`contentiqa serve` without --runtime: ONNX Runtime on the CPU, as `contentiqa score`
    (the torch model is kept for /v1/explain)."""
    from contentiqa.cli.main import build_parser

    captured = _captured_loader(monkeypatch, tmp_path)
    args = build_parser().parse_args(["serve", "--model", ckpt, "--port", "0"])
    assert args.func(args) == 1  # the server never started
    loaded_model = captured["loader"]()
    assert loaded_model.scorer.identity.runtime == "onnx" and loaded_model.explainable
    args = build_parser().parse_args(["serve", "--model", ckpt, "--runtime", "torch", "--port", "0"])
    assert args.func(args) == 1 and captured["loader"]().scorer.identity.runtime == "torch"


def test_serve_runs_and_reports_the_score_commands_precision(ckpt, model, tmp_path, monkeypatch):
    """`serve --precision bf16` runs the torch model under autocast (the GPU setting, checked
    here on the CPU), and every response names the precision, as `score` rows do; the flags
    that contradict each other are refused before the server starts, with score's messages."""
    from contentiqa.cli.main import UsageError, build_parser

    captured = _captured_loader(monkeypatch, tmp_path)
    for flag in (["--precision", "bf16"], ["--autocast", "bf16"]):  # --autocast: its old name
        args = build_parser().parse_args(["serve", "--model", ckpt, *flag, "--port", "0"])
        assert args.func(args) == 1  # the server never started
        half_model = captured["loader"]()
        ident = half_model.scorer.identity
        assert (ident.runtime, ident.precision) == ("torch", "bf16")
    images = files(("a.jpg", jpeg(11)), ("b.jpg", jpeg(12, size=(70, 90))))
    with client_for(model) as c:
        full = c.post("/v1/score", files=images).json()
    assert full["model"]["precision"] == "fp32"
    with TestClient(create_app(ServeConfig(), model=half_model)) as c:
        half = c.post("/v1/score", files=images).json()
    assert half["model"]["precision"] == "bf16"
    a, b = [r["score"] for r in full["results"]], [r["score"] for r in half["results"]]
    lo, hi = full["model"]["score_range"]
    diffs = [abs(x - y) / (hi - lo) for x, y in zip(a, b)]
    assert max(diffs) < 0.05 and max(diffs) > 0  # close to fp32, not equal: bfloat16 arithmetic really ran
    for bad, why in ((["--precision", "fp16", "--runtime", "onnx"], "autocast: not with the ONNX Runtime"),
                     (["--autocast", "bf16", "--precision", "int8"], "give one of them"),
                     (["--runtime", "torch", "--precision", "int8"], "not with the PyTorch runtime"),
                     (["--runtime", "onnx", "--device", "cuda"], "runs on the CPU")):
        args = build_parser().parse_args(["serve", "--model", ckpt, *bad])
        with pytest.raises(UsageError, match=why):
            args.func(args)


def test_uploads_are_preprocessed_on_the_decoding_threads(model, monkeypatch):
    """The thread that runs the model only stacks and runs: each upload is decoded and
    preprocessed on a decoding thread (same scores as preprocessing on the model's thread), and
    an upload whose preprocessing fails gets that error while the others are scored."""
    images = files(("a.jpg", jpeg(11)), ("b.jpg", jpeg(12, size=(70, 90))), ("c.jpg", jpeg(13)))
    with client_for(model, decode_workers=0) as c:  # everything on the model's thread, as before
        inline = c.post("/v1/score", files=images).json()["results"]
    threads = []
    real = type(model).preprocess

    def recording(self, img):
        threads.append(threading.current_thread().name)
        if sorted(img.size) == [70, 90]:
            raise RuntimeError("boom")
        return real(self, img)

    monkeypatch.setattr(type(model), "preprocess", recording)
    with client_for(model, decode_workers=2) as c:
        threads.clear()  # the warm-up pass at start-up ran on the model's thread
        rows = c.post("/v1/score", files=images).json()["results"]
    assert len(threads) == 3 and all(t.startswith("contentiqa-decode") for t in threads)
    assert rows[1]["score"] is None and "preprocessing failed: boom" in rows[1]["error"]
    assert [rows[0]["score"], rows[2]["score"]] == pytest.approx([inline[0]["score"], inline[2]["score"]], abs=1e-6)
    assert rows[0]["error"] is None and rows[2]["error"] is None


def test_served_connections_send_without_waiting_for_acks():
    """The listening socket serve binds itself: the connections asyncio accepts on it must have
    Nagle's algorithm off, or every response's second write waits for the client's delayed ACK
    (a lone request took ~40 ms longer)."""
    import asyncio

    from contentiqa.cli.serve import _listen

    sock = _listen("127.0.0.1", 0)
    sock.listen()
    seen: list[int] = []

    async def main():
        async def handle(reader, writer):
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert seen and seen[0] != 0


def test_a_content_only_models_rows_are_results_not_failures():
    """/v1/score counted every row of a content-only model (a category, no score) failed and
    raised its error metrics, where the command counts them scored."""
    import torch

    from contentiqa.models import create_model

    torch.manual_seed(0)
    model = create_model("iqa-cr-c", pretrained=False, backbone_pretrained=False, dim=16, heads=2, mlp_dim=32,
                         grid=(2, 2), depth=1).eval()
    with client_for(model) as c:
        r = c.post("/v1/score", files=files(("a.jpg", jpeg(1))))
        body = r.json()
        assert r.status_code == 200 and body["n_failed"] == 0 and body["results"][0]["category"]
        assert 'contentiqa_images_total{outcome="scored"} 1.0' in c.get("/metrics").text
        assert c.get("/v1/models").json()["models"][0]["predicts_score"] is False
        # no score to explain: said as the command says it, not a 422 blaming the image
        r = c.post("/v1/explain?target=quality", files=files(("a.jpg", jpeg(1))))
        assert r.status_code == 400 and "predicts no quality score" in r.json()["detail"]
        for target in ("category", "both"):
            r = c.post(f"/v1/explain?target={target}", files=files(("a.jpg", jpeg(1))))
            assert r.status_code == 200 and r.content[:4] == b"\x89PNG", (target, r.text[:200])
            assert r.headers["X-Category"] == body["results"][0]["category"] and "X-Score" not in r.headers


def test_explain_sends_a_category_of_any_alphabet_percent_encoded():
    """A category from one's own labels (not Latin-1) made /v1/explain a plain-text 500."""
    from urllib.parse import unquote

    import torch

    from contentiqa.models import create_model

    torch.manual_seed(0)
    model = create_model("iqa-cr", pretrained=False, backbone_pretrained=False, dim=16, heads=2, mlp_dim=32,
                         grid=(2, 2), depth=1, categories=("人物", "风景", "夜景 – night")).eval()
    with client_for(model) as c:
        row = c.post("/v1/score", files=files(("a.jpg", jpeg(1)))).json()["results"][0]
        r = c.post("/v1/explain?target=quality", files=files(("a.jpg", jpeg(1))))
        assert r.status_code == 200 and unquote(r.headers["X-Category"]) == row["category"]


def test_an_internal_error_answers_500_with_the_request_id_it_logs(model, caplog):
    app = create_app(ServeConfig(), model=loaded(model))
    svc = app.state.service
    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR, logger="contentiqa"):
        def broken():
            raise RuntimeError("a bug")

        svc.require_ready = broken
        r = c.post("/v1/score", files=files(("a.jpg", jpeg())), headers={"X-Request-ID": "abc"})
        assert r.status_code == 500 and r.headers["X-Request-ID"] == "abc" and r.json()["request_id"] == "abc"
        assert any(m == "request abc: internal error answering /v1/score" for m in caplog.messages)
        assert 'contentiqa_requests_total{endpoint="/v1/score",status="500"} 1.0' in c.get("/metrics").text
