"""Multi-process training: the distributed batch sampler, and DistributedDataParallel on two CPU
processes (gloo) against the single-process run with the same global batches.

The comparison is exact in principle: with world size 2 and per-rank batch ``b``, step ``k``
uses batches ``2k`` and ``2k + 1`` of the common epoch list (one per rank) and DDP averages the
two gradients, which is the gradient of the mean loss over the ``2b`` samples; the reference
run trains one process on exactly those ``2b``-sample batches. BatchNorm uses running statistics
(``bn_eval``), dropout is 0 and the optimiser is plain SGD, so only float summation order differs.
The cached-stage DDP run is also interrupted after one epoch and resumed, as after a restart.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Sampler

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from conftest import write_image  # noqa: E402

MODEL = dict(backbone_pretrained=False, dim=16, heads=2, mlp_dim=32, grid=(2, 2), depth=1, dropout=0.0, bn_eval=True)
CFG = dict(epochs=2, batch_size=3, crop=48, hflip=True, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.0,
           scheduler="none", warmup_epochs=0, patience=0)
WORLD = 2


def make_table(root: Path, write: bool = True) -> pd.DataFrame:
    """The 16 photos' table; ``write=False`` only names the photos an earlier call wrote (the ranks and
    the reference run side by side: rewriting a PNG while another process decodes it breaks that read)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):  # 12 train + 4 val, one shape: every batch of 3 can join any other
        p = root / "img" / f"{i}.png"
        if write:
            write_image(p, 56, 56, seed=i)
        rows.append({"image": str(p), "mos": float(rng.uniform(0, 100))})
    return pd.DataFrame(rows)


def build(table: pd.DataFrame, out: Path, cache_stages: int, **cfg):
    from contentiqa.data.table import MOSScale
    from contentiqa.models import create_model
    from contentiqa.training.config import TrainConfig
    from contentiqa.training.trainer import Trainer

    torch.manual_seed(0)
    model = create_model("iqa-cr-q", pretrained=False, **MODEL)
    c = TrainConfig(**{**CFG, "cache_stages": cache_stages, **cfg})
    return Trainer(model, table.iloc[:12], table.iloc[12:], MOSScale(0, 100), c, out, progress=False,
                   cache_dir=out.parent / "cache", log=lambda *a: None)


def worker(root: Path) -> None:
    """One rank (environment as torchrun sets it): DDP runs, results to root/rank<R>.pt."""
    from contentiqa.training import distributed as dist_utils

    torch.set_num_threads(1)
    info = dist_utils.init_from_env("cpu")
    assert info.distributed and info.world_size == WORLD
    table = make_table(root, write=False)
    result = {}
    for cs in (3, 0):  # cached frozen stages (dict inputs, forward_cached) and whole images
        if cs:  # interrupted after one epoch, restarted with --resume: must equal a straight run
            build(table, root / f"ddp_c{cs}", cs, epochs=1).fit()
        tr = build(table, root / f"ddp_c{cs}", cs)
        tr.fit(resume=True)
        result[cs] = {"state": tr.model.state_dict(), "history": tr.history, "steps": len(tr.train_loader),
                      "batches": [b for b in tr.sampler], "ddp": type(tr.train_step).__name__,
                      "val_rows": tr.val_rows.tolist(),
                      # validate() on one process, as a script would after fit(): every row, not its share
                      "validate": tr.validate()}
    torch.save(result, root / f"rank{info.rank}.pt")
    dist_utils.cleanup(info)


class MergedSampler(Sampler):
    """Single-process reference: step k = the union of the ranks' step-k batches."""

    def __init__(self, shapes, batch_size: int, world: int, seed: int):
        from contentiqa.training.data import DistributedShapeGroupedBatchSampler

        self.parts = [DistributedShapeGroupedBatchSampler(shapes, batch_size, world, r, seed=seed) for r in range(world)]

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def __iter__(self):
        return iter([sum(step, []) for step in zip(*[list(p) for p in self.parts])])

    def __len__(self) -> int:
        return len(self.parts[0])


def reference(table: pd.DataFrame, out: Path, cache_stages: int):
    from contentiqa.training.trainer import _collate

    tr = build(table, out, cache_stages)
    tr.sampler = MergedSampler(tr.train_ds.shapes(), CFG["batch_size"], WORLD, seed=0)
    tr.train_loader = DataLoader(tr.train_ds, batch_sampler=tr.sampler, collate_fn=_collate)
    tr.fit()
    return tr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs: list[subprocess.Popen], timeout: float) -> None:
    """Every rank finished with exit code 0 (else the test fails with its output); a rank that
    failed leaves the other waiting for it, so none is ever left running."""
    try:
        for p in procs:
            try:
                output, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail("distributed workers did not finish")
            assert p.returncode == 0, output[-3000:]
    finally:
        for q in procs:
            if q.poll() is None:
                q.kill()
                q.wait(30)


def torchrun_env(rank: int, port: int) -> dict:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    return loopback(env)


def loopback(env: dict) -> dict:
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on the loopback interface
    return env


# -- the sampler ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n,batch,world", [(12, 3, 2), (11, 3, 2), (10, 4, 3), (2, 4, 3)])
def test_distributed_sampler_shards_the_common_batch_list(n, batch, world):
    from contentiqa.training.data import DistributedShapeGroupedBatchSampler, ShapeGroupedBatchSampler

    shapes = [(8, 8) if i % 3 else (8, 12) for i in range(n)]
    for epoch in (0, 1):
        base = ShapeGroupedBatchSampler(shapes, batch, seed=5)
        base.set_epoch(epoch)
        full = list(base)
        ranks = []
        for r in range(world):
            s = DistributedShapeGroupedBatchSampler(shapes, batch, world, r, seed=5)
            s.set_epoch(epoch)
            ranks.append(list(s))
        steps = -(-len(full) // world)
        assert all(len(b) == steps for b in ranks)  # same number of steps everywhere
        interleaved = [ranks[i % world][i // world] for i in range(steps * world)]
        assert interleaved[:len(full)] == full  # every N-th batch of the one epoch list
        assert interleaved[len(full):] == full[:steps * world - len(full)]  # padding repeats the first
        assert sorted(i for b in full for i in b) == list(range(n))
    one = DistributedShapeGroupedBatchSampler(shapes, batch, 1, 0, seed=5)
    assert list(one) == list(ShapeGroupedBatchSampler(shapes, batch, seed=5))


def test_distributed_sampler_drop_last_truncates():
    from contentiqa.training.data import DistributedShapeGroupedBatchSampler

    shapes = [(8, 8)] * 15  # 5 batches of 3
    parts = [list(DistributedShapeGroupedBatchSampler(shapes, 3, 2, r, drop_last=True)) for r in range(2)]
    assert [len(p) for p in parts] == [2, 2]
    seen = [i for p in parts for b in p for i in b]
    assert len(seen) == len(set(seen)) == 12  # disjoint; the fifth batch is dropped
    with pytest.raises(ValueError):
        DistributedShapeGroupedBatchSampler(shapes, 3, 2, 2)


def test_single_process_is_untouched_by_the_distributed_helpers(monkeypatch):
    from contentiqa.training import distributed as dist_utils

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = dist_utils.init_from_env("cpu")
    assert not info.distributed and info.rank == 0 and not dist_utils.is_distributed()
    assert dist_utils.broadcast_object({"a": 1}) == {"a": 1} and dist_utils.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    assert dist_utils.device_for("cuda", 3) == "cuda:3" and dist_utils.device_for("cuda:1", 3) == "cuda:1"
    assert dist_utils.device_for("cpu", 3) == "cpu"
    dist_utils.cleanup(info)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_torchrun_asking_for_cuda_without_it_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """Each process of `torchrun ... train --device cuda` died in torch.cuda.set_device with a
    traceback (the device was checked only after the process group was joined)."""
    from contentiqa.cli.main import main
    from contentiqa.training import distributed as dist_utils

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="CUDA is not available here"):
        dist_utils.init_from_env("cuda")
    data = tmp_path / "d.csv"
    data.write_text("image,mos\na.png,1\nb.png,2\n")
    assert main(["train", "--model", "iqa-cr", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cuda",
                 "--set", "calibrate=false"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available here" in err and "Traceback" not in err


# -- two processes -------------------------------------------------------------------------------
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    port = free_port()
    table = make_table(tmp_path)  # the images exist before the ranks start, and nobody rewrites them
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path)], env=torchrun_env(r, port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    # meanwhile, the single-process references
    refs = {cs: reference(table, tmp_path / f"ref_c{cs}", cs) for cs in (3, 0)}
    wait_all(procs, 240)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    for cs, ref in refs.items():
        a, b = r0[cs], r1[cs]
        assert a["ddp"] == "DistributedDataParallel"
        assert a["steps"] == b["steps"] == 2  # 12 images, 4 batches of 3, 2 per rank
        seen = [i for batch in a["batches"] + b["batches"] for i in batch]
        assert sorted(seen) == list(range(12))  # disjoint shards covering the epoch
        for k, v in a["state"].items():
            assert torch.equal(v, b["state"][k]), f"ranks differ in {k}"
        for ha, hb, hr in zip(a["history"], b["history"], ref.history):
            assert ha["loss"] == hb["loss"] == pytest.approx(hr["loss"], rel=1e-5, abs=1e-7)
            assert ha["val_srocc"] == hb["val_srocc"] and ha["val_rmse"] == pytest.approx(hr["val_rmse"], rel=1e-4)
            assert ha["val_n"] == hr["val_n"] == 4 and ha["val_srocc"] == pytest.approx(hr["val_srocc"], abs=1e-6)
        # every rank validated its own share of the 4 validation rows; together, all of them
        assert a["val_rows"] and b["val_rows"] and sorted(a["val_rows"] + b["val_rows"]) == [0, 1, 2, 3]
        assert a["validate"]["n"] == b["validate"]["n"] == 4  # with cached stages it failed: only a share encoded
        assert a["validate"]["srocc"] == pytest.approx(ref.validate()["srocc"], abs=1e-6)
        for k, v in ref.model.state_dict().items():
            # Same samples, same steps: only the float summation order differs (DDP averages two
            # half-batch gradients); with the multi-level base (several gradient paths into the
            # backbone) that reaches ~1e-5 after four SGD steps, far below any training effect.
            assert torch.allclose(a["state"][k], v, rtol=1e-4, atol=5e-5), f"DDP and single process differ in {k} (cache {cs}): max {(a['state'][k] - v).abs().max():.3g}"
        assert a["history"][0]["loss"] != a["history"][1]["loss"]  # it did train
    # rank 0 wrote one log with both epochs (the first before the restart), and the checkpoints
    out = tmp_path / "ddp_c3"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and (out / "best.pt").is_file() and (out / "last.pt").is_file()


@pytest.mark.slow
def test_torchrun_train_cli(tmp_path):
    """`torchrun --nproc_per_node 2 -m contentiqa train ...`: one run, rank 0 reports and writes."""
    table = make_table(tmp_path)
    for i in range(16, 20):  # 20 images: the ie-iqa protocol's 16 / 4
        write_image(tmp_path / "img" / f"{i}.png", 56, 56, seed=i)
    csv = tmp_path / "data.csv"
    rows = [f"img/{i}.png,{m:.3f}" for i, m in enumerate(list(table["mos"]) + [10.0, 30.0, 60.0, 90.0])]
    rows.append("img/missing.png,50")  # skipped with a warning: once, not once per process
    csv.write_text("image,mos\n" + "\n".join(rows) + "\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: iqa-cr-q\nmodel_args: {backbone_pretrained: false, dim: 16, heads: 2, mlp_dim: 32, grid: [2, 2], depth: 1}\n"
                   "train: {epochs: 2, batch_size: 3, crop: 48, cache_stages: 3}\n")
    out = tmp_path / "run"
    env = loopback(dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path)))  # torchelastic_* folders go here
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "contentiqa", "train", "--data", str(csv), "--config", str(cfg), "--out", str(out),
                        "--protocol", "ie-iqa", "--quiet", "--skip-missing"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stderr.count("skipping 1 missing") == 1, r.stderr[-3000:]
    assert r.stdout.count("best epoch") == 1 and r.stdout.count("test:") == 1  # rank 0 alone reports
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    for f in ("best.pt", "last.pt", "split.json", "test_metrics.json", "config.json"):
        assert (out / f).is_file(), f


def metrics_worker(root: Path) -> None:
    """One rank of the accumulator test: rank r updates with every other item from r."""
    from contentiqa.metrics.accumulators import RowPredictions, iqa_accumulators
    from contentiqa.training import distributed as dist_utils

    info = dist_utils.init_from_env("cpu")
    pred, target = metric_data()
    mine = np.arange(info.rank, len(pred), WORLD)
    acc = iqa_accumulators()
    for chunk in np.array_split(mine, 3):  # several updates per rank
        acc.update(torch.from_numpy(pred[chunk]), torch.from_numpy(target[chunk]))
    rows = RowPredictions()
    rows.update(mine, pred[mine])
    if info.rank == 0:
        rows.update(np.array([], dtype=np.int64), np.array([]))  # an empty update is harmless
    result = {"acc": {k: float(v) for k, v in acc.compute().items()}, "rows": rows.compute()}
    # a rank that saw nothing (all ten items on rank 0), and one item on each rank
    lopsided, one_each = iqa_accumulators(), iqa_accumulators()
    if info.rank == 0:
        lopsided.update(torch.from_numpy(pred[:10]), torch.from_numpy(target[:10]))
    one_each.update(torch.from_numpy(pred[info.rank:info.rank + 1]), torch.from_numpy(target[info.rank:info.rank + 1]))
    result["lopsided"] = {k: float(v) for k, v in lopsided.compute().items()}
    result["one_each"] = {k: float(v) for k, v in one_each.compute().items()}
    # a compute that raised (one item in all) left the gathered states in place: the next update failed
    result["after_error"] = {}
    for name in ("plcc", "srocc", "krocc"):
        m = iqa_accumulators()[name]
        if info.rank == 0:
            m.update(torch.from_numpy(pred[:1]), torch.from_numpy(target[:1]))
        try:
            m.compute()
        except ValueError:
            pass
        more = [1 + 2 * info.rank, 2 + 2 * info.rank]
        m.update(torch.from_numpy(pred[more]), torch.from_numpy(target[more]))
        result["after_error"][name] = float(m.compute())
    torch.save(result, root / f"metrics_rank{info.rank}.pt")
    dist_utils.cleanup(info)


def metric_data(n: int = 23) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    pred = rng.normal(size=n)
    return pred, pred + rng.normal(size=n)


STAT = {"plcc": "pearsonr", "srocc": "spearmanr", "krocc": "kendalltau"}


def test_accumulators_reduce_across_two_processes(tmp_path):
    """Each rank sees half of the items (uneven: 12 and 11); compute() gives the metrics of all."""
    from scipy import stats

    port = free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "metrics", str(tmp_path)], env=torchrun_env(r, port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    wait_all(procs, 120)
    pred, target = metric_data()
    want = {"plcc": stats.pearsonr(pred, target)[0], "srocc": stats.spearmanr(pred, target)[0],
            "krocc": stats.kendalltau(pred, target)[0], "rmse": float(np.sqrt(np.mean((pred - target) ** 2)))}
    for r in range(WORLD):
        res = torch.load(tmp_path / f"metrics_rank{r}.pt", weights_only=False)
        for k, v in want.items():
            assert res["acc"][k] == pytest.approx(v, abs=1e-6), (r, k)
        assert res["rows"]["index"].tolist() == list(range(len(pred)))
        for k in ("plcc", "srocc", "krocc"):  # gloo aborted on KROCC's empty rank; PLCC was NaN
            assert res["lopsided"][k] == pytest.approx(getattr(stats, STAT[k])(pred[:10], target[:10])[0], abs=1e-6), (r, k)
        assert res["one_each"]["plcc"] == pytest.approx(stats.pearsonr(pred[:2], target[:2])[0], abs=1e-6), r
        for k, v in res["after_error"].items():  # the item before the error, and the four after it
            assert v == pytest.approx(getattr(stats, STAT[k])(pred[:5], target[:5])[0], abs=1e-6), (r, k)
        assert np.array_equal(res["rows"]["score"], pred)


if __name__ == "__main__":  # a rank of a two-process test
    if sys.argv[1] == "metrics":
        metrics_worker(Path(sys.argv[2]))
    else:
        worker(Path(sys.argv[1]))


@pytest.mark.parametrize("value", ["1h", "0", "-5", "nan", "9e13", "1e10"])
def test_a_timeout_that_is_no_number_of_seconds_names_its_variable(monkeypatch, value):
    """CONTENTIQA_DIST_TIMEOUT=1h said only "could not convert string to float: '1h'", once per process."""
    from contentiqa.training import distributed as dist_utils

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("CONTENTIQA_DIST_TIMEOUT", value)
    with pytest.raises(ValueError, match=rf"CONTENTIQA_DIST_TIMEOUT='{value}': give a number of seconds"):
        dist_utils.init_from_env("cpu")


def test_a_process_of_the_run_gone_is_one_line_with_what_to_do(tmp_path, monkeypatch, capsys):
    """A rank killed mid-run left each other rank a 30-line traceback of gloo's 'Connection reset by peer';
    a rendezvous no other process joined was a DistStoreError traceback."""
    import contentiqa.cli.train as train_cli
    from contentiqa.cli.main import main
    from contentiqa.training import distributed as dist_utils

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    data = tmp_path / "d.csv"
    data.write_text("image,mos\na.png,1\nb.png,2\n")
    argv = ["train", "--model", "iqa-cr-q", "--data", str(data), "--out", str(tmp_path / "run"), "--set", "calibrate=false"]
    monkeypatch.setattr(dist_utils, "init_from_env", lambda *a, **k: dist_utils.DistInfo(0, 2, 0, False))

    def gone(*a, **k):
        raise RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:13226: "
                           "Connection reset by peer\nException raised from ...")

    monkeypatch.setattr(train_cli, "_train", gone)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "lost another process of the run ([third_party/gloo" in err and "--resume" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

    monkeypatch.setattr(train_cli, "_train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug of ours")))
    with pytest.raises(RuntimeError, match="a bug of ours"):  # not taken for a lost process
        main(argv)
    # processes that never met: said as such by train and experiment (a rerun meets the same wall)
    monkeypatch.undo()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")

    def never_joined(*a, **k):
        raise torch.distributed.DistStoreError("Timed out after 9 seconds waiting for clients. 1/2 clients joined.")

    monkeypatch.setattr(torch.distributed, "init_process_group", never_joined)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\ndata: {{name: csv, root: {data}}}\nmodel: iqa-cr-q\n")
    for command in (argv, ["experiment", str(config), "--quiet", "--out", str(tmp_path / "exp")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "did not all join (Timed out after 9 seconds" in err and "MASTER_ADDR" in err and "lost" not in err


def test_an_experiment_whose_other_process_is_gone_says_it_in_one_line(tmp_path, monkeypatch, capsys):
    import contentiqa.experiments as experiments
    from contentiqa.cli.main import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = tmp_path / "c.yaml"
    config.write_text("name: c\ndata: {name: csv, root: d.csv}\nmodel: iqa-cr-q\n")

    def gone(*a, **k):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:598] Connection closed by peer [127.0.0.1]:5001")

    monkeypatch.setattr(experiments, "run_experiment", gone)
    monkeypatch.setattr("contentiqa.cli.experiment._check_all_first", lambda paths, args: [None] * len(paths))
    assert main(["experiment", str(config), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "lost another process of the run ([gloo" in err and len(err.strip().splitlines()) == 1
