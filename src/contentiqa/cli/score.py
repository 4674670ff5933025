"""``contentiqa score PATH...``: score photos, print a table, write CSV / JSON / JSONL / HTML.

PATHs are image files, folders (their images; with --recursive their subfolders' too) and glob
patterns (expanded here, like the shell would, so quoted patterns work). Inside folders only
files with an image extension are taken; a file named explicitly is always attempted. Every
input gets a row: one that cannot be scored (missing, not an image, truncated, too small, ...)
gets an error instead of a score, and the rest of the batch goes on.

Runtimes: --runtime auto (default) runs ONNX Runtime on the CPU and PyTorch on a GPU
(--device cuda); --runtime torch or onnx forces one. ONNX Runtime runs the graph shipped with
the model (every shipped tag has one), else one exported once into the cache
($CONTENTIQA_CACHE_DIR, default ~/.cache/contentiqa; files under onnx/, named by a hash of the
weights file, rebuilt if damaged; a read-only cache falls back to the temporary folder; the
export needs PyTorch), or an ONNX file given as --model FILE.onnx. Scoring from a graph needs no
PyTorch: its metadata give the preprocessing, scale and categories.
--precision int8 runs the int8 graph (the CNN quantized with the calibration shipped beside the
weights, WEIGHTS.int8.json: `contentiqa models` lists the tags that have one); without --precision
a model runs int8 only where that was measured to keep its accuracy, which none of the shipped
tags does (benchmarks/results/int8.md). bf16 / fp16 run PyTorch under
autocast (the default on a CUDA GPU is bf16). ONNX Runtime's compute threads follow the cores
free when the run starts (--threads N fixes them); with 8 or more inputs each thread scores its
own photo, side by side.

Many machines: --shard I/N scores a fixed 1/N of the inputs (by a hash of each file's absolute
path), so N jobs, e.g. a SLURM array with
`--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT -o part$SLURM_ARRAY_TASK_ID.csv`,
write tables that concatenate to the whole, every input once.

Nothing is lost: --output is checked writable and locked (a second run writing the same file
is refused) before scoring; an existing --output needs --resume (finish it: only inputs not yet
scored are run, and only with the model that scored the rest) or --force (replace it). Results
are saved every --flush-every rows (an HTML report at most every 30 s), and on Ctrl-C, SIGTERM
(a batch system's time limit) or SIGHUP; if --output cannot be written, they go to a rescue file
in the temporary folder, named in the message. Every row records the model, its weights file and
SHA-256, the precision it ran in (fp32 / int8 graph, or bf16 / fp16 autocast) and the version;
--resume refuses to mix them.
--explain (heatmaps in the HTML report) needs PyTorch: pip install 'contentiqa[torch]'.

Exit code: 0 every input scored, 1 some failed (the output still lists every input),
2 usage error (nothing scored), 3 results could not be written to --output (saved to the
rescue file named on stderr), 128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM; progress saved).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ._model_loading import add_scorer_args, load_scorer, scorer_kwargs
from .common import finite_float, in_cli_words, megapixels, user_path
from ..utils.terminal import printable
from .main import UsageError

EXPLAIN_REPORT_MAX_PIXELS = 1_000_000
"""Images are explained for the report on a copy of at most this size (the heatmap is shown
as a thumbnail anyway)."""
# --sort's words (sort_rows' own orders stay accepted: --sort=-score); best and worst become an
# order once the model says which way its scores run (sort_order).
SORT_ORDERS = ("best", "worst", "path", "-score", "score")


def _sort_order(value: str) -> str:
    if value not in SORT_ORDERS:
        raise argparse.ArgumentTypeError(f"invalid order {value!r} (choose from best, worst, path)")
    return value


def sort_order(value: str | None, higher_is_better: bool) -> str | None:
    """--sort's value as :func:`~contentiqa.reporting.results.sort_rows`' order: best first is the
    highest score first only where higher is better (a model trained on DMOS: the lowest)."""
    if value in ("best", "worst"):
        return "-score" if (value == "best") == higher_is_better else "score"
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score images (files, folders, globs) and write a table / report",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders or glob patterns")
    add_scorer_args(p, "")
    p.add_argument("--recursive", "-r", action="store_true", help="also take images in subfolders of folder PATHs")
    p.add_argument("--output", "-o", type=user_path, metavar="FILE", help="write results to FILE.csv, .json, .jsonl or .html (report)")
    p.add_argument("--batch-size", "-b", type=int, default=None,
                   help="images per forward pass (equal sizes are batched). Default on the CPU: 4 for fixed-input models "
                        "(ie-iqa) under PyTorch, else 1 (native-size and ONNX batches were measured no faster per "
                        "image; benchmarks/results/speed.md); 32 on a GPU. A batch also stops at 2 MP of pixels (8 images of 500 x "
                        "500) on a CPU, and for native-size models on a GPU")
    p.add_argument("--workers", "-j", type=int, default=None,
                   help="image-decoding threads (0 = decode in the main thread). Default: 2 with ONNX Runtime; with "
                        "PyTorch, the cores its threads leave free, at most 2 (so 0 on a 2-core machine, where decoding "
                        "beside the model was measured slower); on a GPU one per CPU core but one, at most 16")
    p.add_argument("--sort", nargs="?", const="best", type=_sort_order, metavar="ORDER",
                   help="order of the table and output file: best (best first; what a bare --sort means), worst, or "
                        "path; failed inputs last")
    p.add_argument("--explain", action="store_true",
                   help="HTML report: add a quality heatmap to each card (see --explain-limit; needs PyTorch)")
    p.add_argument("--explain-limit", type=int, default=100, metavar="N",
                   help="with --explain, heatmaps for the N best-scored images only (default 100; 0 = all)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in --output and score only the inputs missing there (failed ones are "
                        "retried; rows are matched by path, so a photo replaced since keeps its old row: --force "
                        "rescores all); refused if they were scored with another model")
    p.add_argument("--force", action="store_true", help="replace an existing --output (without it, or --resume, an existing file is an error)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors and notes on inputs passed over")
    p.add_argument("--max-pixels", type=megapixels, default=None, metavar="MP",
                   help="refuse images larger than MP megapixels (decompression-bomb guard; default 100)")
    p.add_argument("--max-side", type=int, default=None, metavar="PX",
                   help="native-resolution models (iqa-cr): downscale images whose longest side exceeds PX first, "
                        "noted in the row (default 2048, which bounds each photo's model run under 1 GB; 0 = never: a 24 MP "
                        "photo then needs about 6 GB)")
    p.add_argument("--shard", metavar="I/N", default=None,
                   help="score only shard I of N (0 <= I < N): a deterministic 1/N of the inputs, so N "
                        "machines split one job and their outputs concatenate without duplicates")
    p.add_argument("--flush-every", type=int, default=100, metavar="N",
                   help="rewrite --output after every N new results (and at least every minute) so a killed run keeps its "
                        "progress; an HTML report, which holds every thumbnail, at most every 30 s")
    p.add_argument("--thumbnail-size", type=int, default=256, metavar="PX", help="HTML report thumbnail size (default 256)")
    p.set_defaults(func=run)


def _validate(args: argparse.Namespace) -> tuple[str | None, tuple[int, int] | None, dict[str, Any]]:
    """``(output format, shard, load_scorer arguments)``, or a usage error, before any work."""
    from ..reporting.results import output_format

    if not args.paths:
        raise UsageError("no PATHs given: name image files, folders or glob patterns to score")
    if "" in args.paths:  # what `score "$PHOTOS"` passes when the variable is unset: no file's name
        raise UsageError("an empty PATH argument (an unset shell variable?): name image files, folders or patterns")
    for ok, msg in [
        (args.batch_size is None or args.batch_size >= 1, "--batch-size must be at least 1"),
        (args.workers is None or args.workers >= 0, "--workers must be 0 or more"),
        (args.flush_every >= 1, "--flush-every must be at least 1"),
        (args.explain_limit >= 0, "--explain-limit must be 0 or more"),
        (args.thumbnail_size >= 16, "--thumbnail-size must be at least 16"),
        (args.max_side is None or args.max_side >= 0, "--max-side must be 0 (never downscale) or a number of pixels"),
        (args.max_pixels is None or args.max_pixels > 0, "--max-pixels must be a positive number of megapixels"),
        (not (args.resume and not args.output), "--resume needs --output (the file to resume)"),
        (not (args.resume and args.force), "--resume keeps --output's rows, --force replaces them: choose one"),
    ]:
        if not ok:
            raise UsageError(msg)
    shard = None
    if args.shard is not None:
        from ..inference.shard import parse_shard

        try:
            shard = parse_shard(args.shard)
        except ValueError as exc:
            raise UsageError(f"--shard: {exc}") from None
    kwargs = scorer_kwargs(args)  # a misspelt model too: said before --output's folder and lock are made
    if args.explain:
        from ..utils.extras import require

        if str(kwargs["spec"] or "").lower().endswith(".onnx"):
            raise UsageError("--explain needs the PyTorch model (Grad-CAM): use --model NAME or a .pt checkpoint")
        require("torch", "--explain (Grad-CAM heatmaps)")
    fmt = None
    if args.output:
        try:
            fmt = output_format(args.output)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if os.path.isdir(args.output):
            raise UsageError(f"--output {args.output} is a folder; give a file name")
    if args.explain and fmt != "html":
        raise UsageError(
            "--explain adds heatmaps to the HTML report: use --output REPORT.html "
            "(or `contentiqa explain IMAGE` for one image)"
        )
    return fmt, shard, kwargs


def run(args: argparse.Namespace) -> int:
    from ..inference.threads import CpuSample
    from ._output import check_writable, output_lock

    # The machine's CPU use is sampled over the start-up work (imports, the folder listing)
    # instead of a wait of its own before the thread plan.
    sample = CpuSample.start() if args.threads is None else None
    fmt, shard, kwargs = _validate(args)
    output = Path(args.output) if args.output else None
    if output is None:
        return _Scoring(args, fmt, None, shard, kwargs, sample).run()
    check_writable(output)  # before any work: a run must not score everything, then fail to write
    with output_lock(output):  # one writer per file: a second run would erase this one's rows
        if output.exists() and not (args.resume or args.force):
            raise UsageError(f"--output {output} exists: pass --resume to finish it, or --force to replace it")
        return _Scoring(args, fmt, output, shard, kwargs, sample).run()


def _check_same_model(existing: list[dict], record: dict[str, str], output: Path) -> None:
    """--resume only adds rows of the model that made the file (same weights, byte for byte)."""
    from ..reporting.results import row_ok

    precisions = sorted({str(r.get("precision")) for r in existing if row_ok(r) and r.get("precision")})
    if len(precisions) > 1:  # (parts of a sharded run scored differently, then joined): no one option matches
        raise UsageError(f"cannot resume {output}: its rows were scored in {' and '.join(precisions)} (its parts were "
                         "scored differently); score the parts again in one precision, or --force to start over")
    for r in existing:
        if not row_ok(r):
            continue  # failed rows are retried with the current model anyway
        if not r.get("weights_sha256"):
            raise UsageError(
                f"cannot resume {output}: its rows do not say which model scored them (written by an older "
                "contentiqa); score again with --force, or write to another --output"
            )
        if (r.get("model"), r.get("weights_sha256")) == (record["model"], record["weights_sha256"]) and \
                r.get("precision") != record["precision"]:
            was = r.get("precision") or "not recorded (an older contentiqa wrote it)"
            hint = f"--precision {r['precision']}" if r.get("precision") else None
            raise UsageError(
                f"cannot resume {output}: its rows were scored in precision {was}, this run is {record['precision']} "
                "(one model's weights in two precisions give slightly different scores); "
                + (f"pass {hint} to match them, " if hint else "")
                + "write to another --output, or --force to start over"
            )
        if (r.get("model"), r.get("weights_sha256")) != (record["model"], record["weights_sha256"]):
            raise UsageError(
                f"cannot resume {output}: it was scored with model {r.get('model')} ({r.get('weights') or '?'}, "
                f"sha256 {str(r.get('weights_sha256'))[:12]}), not {record['model']} ({record['weights']}, "
                f"sha256 {record['weights_sha256'][:12]}); mixing them would make the scores incomparable. "
                "Use that model, another --output, or --force to start over"
            )


class _Scoring:
    """One ``contentiqa score`` run: the inputs, the scorer, the rows (those kept from --output
    and the new ones) and their saving: every --flush-every rows, on a signal, and at the end;
    to a rescue file when --output cannot be written."""

    def __init__(self, args: argparse.Namespace, fmt: str | None, output: Path | None, shard: tuple[int, int] | None,
                 kwargs: dict[str, Any], sample: Any):
        from ._output import StopSignals

        self.args, self.fmt, self.output, self.shard, self.kwargs, self.sample = args, fmt, output, shard, kwargs, sample
        self.existing: list[dict] = []
        self.thumbs: dict[str, bytes] = {}
        # the report's heatmaps (--explain), their caption and notes: an earlier run's are kept on --resume
        self.heatmaps: dict[str, bytes] = {}
        self.heat_caption: str | None = None
        self.heat_notes: list[str] = []
        self.new_rows: dict[int, dict] = {}
        self.report_notes: list[str] = []
        self.stops = StopSignals()
        self.since, self.last, self.cost = 0, time.monotonic(), 0.0
        self.write_error: OSError | None = None
        self.elsewhere: Callable[[str], str | None] | None = None
        self.real_inputs: dict[str, str] | None = None
        self.kept_paths: set[str] = set()

    def _read_existing(self) -> None:
        from ..reporting.html import read_html_heatmaps, read_html_thumbnails
        from ..reporting.results import read_results

        if not (self.args.resume and self.output is not None and self.output.exists()):
            return
        try:
            self.existing = read_results(self.output)
        except (ValueError, OSError) as exc:
            raise UsageError(f"cannot resume: {exc}") from None
        if self.fmt == "html":
            try:
                # as read_results reads it: universal newlines would turn a "\r" of a name into "\n"
                text = self.output.read_bytes().decode("utf-8-sig", errors="surrogateescape")
                self.thumbs.update(read_html_thumbnails(text))
                self.heatmaps, self.heat_caption = read_html_heatmaps(text)
            except (OSError, ValueError):
                pass
            if self.heatmaps and not self.args.explain:
                self.heat_notes.append(f"heatmaps of {len(self.heatmaps)} image(s) kept from the earlier run "
                                       "(--explain explains the report's images again)")

    def _inputs(self) -> list[tuple[str, str | None]]:
        from ..data.inputs import collect_inputs

        scan_notes: list[str] = []
        entries = collect_inputs(self.args.paths, self.args.recursive, scan_notes)
        if self.output is not None:  # a glob (p/*) names the run's own output too: never an input
            own = os.path.realpath(self.output)
            kept = [e for e in entries if os.path.realpath(e[0]) != own]
            if len(kept) < len(entries):
                scan_notes.append(f"{self.output} is this run's --output: not scored")
            entries = kept
        if self.shard is not None:
            from ..inference.shard import select_shard

            n_all = len(entries)
            entries = select_shard(entries, *self.shard, key=lambda e: e[0])
            if not self.args.quiet:
                print(f"shard {self.shard[0]}/{self.shard[1]}: {len(entries)} of {n_all} input(s)", file=sys.stderr)
        for note in scan_notes:
            print(f"note: {printable(note)}", file=sys.stderr)
        return entries

    def _load(self, n_inputs: int) -> None:
        from ..reporting.html import model_info
        from ..reporting.results import model_record

        notes: list[str] = []
        self.scorer = load_scorer(self.kwargs, notes, images=n_inputs, cpu_sample=self.sample)
        ident = self.scorer.identity
        if not self.args.quiet:
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            if ident.graph is not None:
                print(f"ONNX Runtime: {ident.graph}", file=sys.stderr)
        if self.args.max_pixels is not None:
            self.scorer.max_pixels = max(1, int(round(self.args.max_pixels * 1e6)))
        if self.args.max_side is not None:
            if self.scorer.native_resolution and 0 < self.args.max_side < self.scorer.min_size:
                # every photo would be downscaled below what the model reads, and fail one by one
                raise UsageError(f"--max-side {self.args.max_side} would downscale every photo below the "
                                 f"{self.scorer.min_size} px this model needs of its short side: give 0 (never "
                                 f"downscale) or a size well above {self.scorer.min_size} (a 3:2 photo needs "
                                 f"{-(-self.scorer.min_size * 3 // 2)} or more)")
            self.scorer.max_side = self.args.max_side or None
        self.info = model_info(self.scorer)
        # the folder relative paths start from: a --resume from elsewhere finds each row's file
        # exactly, never another folder's photo of the same name (IMG_0001.jpg of another day)
        self.record = {**model_record(ident), "start_folder": os.getcwd()}
        if self.scorer.max_pixels is not None:
            self.report_notes.append(f"images over {self.scorer.max_pixels / 1e6:g} MP are refused (decompression-bomb guard)")
        if self.scorer.native_resolution and self.scorer.max_side:
            self.report_notes.append(f"images with a side over {self.scorer.max_side} px are scored downscaled to it (memory bound)")

    def current_rows(self) -> list[dict]:
        from ..reporting.results import sort_rows

        return sort_rows(self.kept + [self.new_rows[k] for k in sorted(self.new_rows)],
                         sort_order(self.args.sort, self.info["higher_is_better"]))

    def save(self) -> bool:
        """Rewrite --output (atomically; a signal waits for the write); False if it failed."""
        from ..reporting.html import write_html_report
        from ..reporting.results import write_results

        if self.output is None:
            return True
        rows = self.current_rows()
        try:
            with self.stops.critical():
                if self.fmt == "html":
                    write_html_report(self.output, rows, self.info, self.thumbs, self.heatmaps,
                                      thumbnail_size=self.args.thumbnail_size, notes=self.report_notes + self.heat_notes,
                                      heatmap_caption=self.heat_caption,
                                      order=sort_order(self.args.sort, self.info["higher_is_better"]))
                else:
                    write_results(self.output, rows, self.fmt)
        except OSError as exc:
            if self.write_error is None:
                print(f"warning: cannot write {self.output} ({exc.strerror or exc}); results are kept in memory",
                      file=sys.stderr)
            self.write_error = exc
            return False
        self.write_error = None
        return True

    def rescue(self) -> int:
        """--output could not be written: the rows go to a file in the temporary folder."""
        from ..reporting.results import rows_to_csv, write_results
        from ._output import EXIT_NOT_WRITTEN, rescue_path

        assert self.output is not None and self.fmt is not None
        exc = self.write_error
        why = exc.strerror or exc if exc is not None else "?"
        spare = None
        try:
            spare = rescue_path(self.output, self.fmt)
            write_results(spare, self.current_rows(), "jsonl" if self.fmt == "html" else self.fmt)
        except OSError as exc2:
            if spare is not None:
                spare.unlink(missing_ok=True)  # the empty file made for it
            where = spare or "a rescue file in the temporary folder"
            print(f"error: cannot write {self.output} ({why}) nor {where} ({exc2.strerror or exc2}); "
                  "the results follow on stdout as CSV", file=sys.stderr)
            sys.stdout.write(rows_to_csv(self.current_rows()))
            return EXIT_NOT_WRITTEN
        print(f"error: cannot write {self.output} ({why}); all {len(self.current_rows())} result(s) were saved "
              f"to {spare} instead (exit code {EXIT_NOT_WRITTEN}); continue from there with --resume -o {spare}",
              file=sys.stderr)
        return EXIT_NOT_WRITTEN

    def on_result(self, i: int, pred: Any) -> None:
        from ..reporting.results import row_from_prediction

        row = row_from_prediction(self.scorer.clip_to_scale(pred))
        if row["error"]:
            row["error"] = in_cli_words(row["error"], ("--max-pixels", "--max-side"))
        self.new_rows[self.to_score[i][0]] = {**row, "path": self._written(row["path"]), **self.record}
        self.since += 1
        now = time.monotonic()
        waited = now - self.last
        # Each save rewrites the whole file: once that takes noticeable time (a long run's big
        # table), space the saves so they cost at most ~10 % of the run, not O(n^2) in total.
        spaced = self.cost < 0.05 or waited >= min(60.0, 10.0 * self.cost)
        due = self.since >= self.args.flush_every and spaced and (self.fmt != "html" or waited >= 30.0)
        if due or waited >= 60.0:
            self.save()
            done = time.monotonic()
            self.since, self.last, self.cost = 0, done, done - now

    def on_image(self, i: int, image: Any) -> None:
        from ..reporting.html import make_thumbnail

        self.thumbs[self._written(self.to_score[i][1])] = make_thumbnail(image, self.args.thumbnail_size)

    def run(self) -> int:
        from ..data.inputs import path_key
        from ..reporting.results import row_ok
        from ._output import Stopped, terminate_as_interrupt

        self._read_existing()
        entries = self._inputs()
        # What is already done (resume): scored rows are kept and skipped; failed rows are retried.
        self.input_keys = {path_key(p) for p, _ in entries}
        self._match_rows_written_elsewhere()
        # a file a scoring model wrote (one model per file): a row of it without a score (its
        # cell emptied by hand) is not done, and is scored again like a failed one
        scoring = any(r.get("score") is not None for r in self.existing)

        def finished(r: dict) -> bool:
            return row_ok(r) and (r.get("score") is not None or not scoring)

        done = {self._row_key(r) for r in self.existing if finished(r)}
        todo = [(k, p, err) for k, (p, err) in enumerate(entries) if path_key(p) not in done]
        with terminate_as_interrupt():  # a stop during a first export unwinds it: no graph-sized temporary left
            # planned for the photos it will score, not every input: a resume with a few left,
            # or inputs that are errors already, ran a few photos on one thread of two
            self._load(sum(err is None for _, _, err in todo))
        if self.existing:
            assert self.output is not None
            _check_same_model(self.existing, self.record, self.output)
        # a failed row is retried: dropped when it names one of this run's inputs, or one of its
        # PATH arguments (a folder that held no image, a pattern that matched none, expanded now)
        retried = self.input_keys | {path_key(a) for a in self.args.paths}
        self.kept = [r for r in self.existing if finished(r) or self._row_key(r) not in retried]
        self.kept_paths = {str(r["path"]) for r in self.kept}
        for k, p, err in todo:
            if err is not None:
                self.new_rows[k] = {"path": self._written(p), "score": None, "category": None, "category_confidence": None,
                                    "error": err, "notes": "", **self.record}
        self.to_score = [(k, p) for k, p, err in todo if err is None]
        with self.stops:
            try:
                saved = self._score()
            except (KeyboardInterrupt, Stopped) as exc:
                return self._interrupted(exc)
        return self._summary(entries, todo, saved)

    def _score(self) -> bool:
        """Score what is to be scored, add the heatmaps (--explain), save; False if --output
        could not be written."""
        if self.to_score:
            self.scorer.run([p for _, p in self.to_score], on_result=self.on_result,
                            on_image=self.on_image if self.fmt == "html" else None, progress=not self.args.quiet,
                            return_results=False, batch_size=self.args.batch_size, workers=self.args.workers)
        if self.args.explain:
            from ..reporting.heatmaps import heatmap_thumbnails
            from ._model_loading import heatmap_model

            limit = self.args.explain_limit
            self.heatmaps, problems, self.heat_caption = heatmap_thumbnails(
                heatmap_model(self.scorer, self.kwargs), self.current_rows(), limit,
                self.args.thumbnail_size, EXPLAIN_REPORT_MAX_PIXELS, progress=not self.args.quiet, locate=self._row_key)
            self.heat_notes = [
                f"heatmaps: {self.heat_caption}, for the {len(self.heatmaps)} "
                f"{'best-scored' if self.scorer.predicts_score else 'first'} image(s)"
                f"{'' if limit == 0 else f' (limit {limit})'}; images over "
                f"{EXPLAIN_REPORT_MAX_PIXELS / 1e6:g} MP are explained on a downscaled copy",
                *problems,
            ]
        return self.save()

    def _interrupted(self, exc: BaseException) -> int:
        from ._output import Stopped

        signum = exc.signum if isinstance(exc, Stopped) else 2
        what = exc.name if isinstance(exc, Stopped) else "SIGINT"
        self.stops.ignore_further()  # a second Ctrl-C must not cut the save that keeps the results
        if self.output is None:
            print(f"interrupted ({what})", file=sys.stderr)
        elif self.save():
            print(f"interrupted ({what}): {len(self.new_rows)} new result(s) saved in {self.output}; rerun with "
                  "--resume to finish", file=sys.stderr)
        else:
            self.rescue()
        return 128 + signum

    def _written(self, path: str) -> str:
        """How a new row names its input: as given, or absolute where a kept row of another
        folder's photo is written alike (IMG_0001.jpg of two days): a table, and the report's
        pictures keyed by it, hold one row per name."""
        return os.path.abspath(path) if path in self.kept_paths and not os.path.isabs(path) else path

    def _row_key(self, row: dict) -> str:
        """The input a row's path names. A relative path was written relative to the folder its
        run started in: the row's ``start_folder`` where the photo's folder is still there. Rows
        without one (an older contentiqa, a table edited by hand) or whose photos have moved are matched
        from this folder, else from the output's folder (where ``score photos -o scores.csv``
        runs), else from the start folder the file's paths point to
        (:meth:`_match_rows_written_elsewhere`), whichever names one of this run's inputs."""
        from ..data.inputs import path_key
        from ..reporting.results import row_file

        path = row["path"]
        key = path_key(path)
        if os.path.isabs(path):
            return key
        own = row_file(row)
        if own is not None:  # read from its start folder
            own = path_key(own)
            # the same file reached another way (a folder through a symbolic link) is this input
            return own if own in self.input_keys else self._real_inputs().get(os.path.realpath(own), own)
        if key in self.input_keys or self.output is None:
            return key
        beside = path_key(os.path.join(os.path.dirname(os.path.abspath(self.output)), path))
        if beside in self.input_keys:
            return beside
        elsewhere = self.elsewhere(path) if self.elsewhere is not None else None
        return elsewhere if elsewhere is not None and elsewhere in self.input_keys else key

    def _real_inputs(self) -> dict[str, str]:
        """This run's inputs by their real paths (links resolved)."""
        if self.real_inputs is None:
            self.real_inputs = {os.path.realpath(k): k for k in self.input_keys}
        return self.real_inputs

    def _match_rows_written_elsewhere(self) -> None:
        """--resume from another folder than the first run's: rows naming none of this run's
        inputs from here or beside the output are matched by where their paths end, so the
        photos they hold are not scored (and listed) twice."""
        from ..data.inputs import relative_resolver

        unmatched = [r for r in self.existing if self._row_key(r) not in self.input_keys]
        if not unmatched:
            return
        self.elsewhere = relative_resolver([r["path"] for r in unmatched], self.input_keys)
        found = sum(self._row_key(r) in self.input_keys for r in unmatched)
        if found and not self.args.quiet:
            print(f"note: {found} row(s) of {self.output} name their photos from the folder an earlier run started "
                  "in; matched to this run's inputs by their paths", file=sys.stderr)

    def _summary(self, entries: list, todo: list, saved: bool) -> int:
        from ..reporting.results import format_table, row_ok

        rows = self.current_rows()
        mine = [r for r in rows if self._row_key(r) in self.input_keys]
        failed = [r for r in mine if not row_ok(r)]
        if self.args.quiet:
            for r in failed:
                print(printable(f"{r['path']}: {r.get('error') or 'no score'}"), file=sys.stderr)
        else:
            print(format_table(rows))
            lo, hi = self.info["score_range"]
            direction = "higher" if self.info["higher_is_better"] else "lower"
            resumed = len(entries) - len(todo)
            print(
                f"\n{len(mine) - len(failed)} of {len(mine)} input(s) scored, {len(failed)} failed"
                + (f" ({resumed} already in {self.output}, skipped)" if resumed else "")
                # a model file's own name (ONNX metadata) and its path: escaped, as the table's cells
                + printable(f"; model {self.info['name']}" + (f" ({self.info['checkpoint']})"
                                                             if self.info.get("checkpoint") else ""))
                + (f"; scores on [{lo:g}, {hi:g}], {direction} is better" if self.scorer.predicts_score
                   else "; content categories only (this model gives no score)")
            )
            if self.output is not None and saved:
                print(f"wrote {self.output}")
        if not saved:
            return self.rescue()
        return 1 if failed else 0
