"""``contentiqa explain IMAGE``: where the model looked for its quality score (and category).

Writes a PNG with the image, the quality heatmap overlay and (for models with a content head)
the category heatmap overlay side by side, titled with the score and category. Heatmaps:
Grad-CAM over every CNN feature level the score uses (combined on the finest grid), fused (elementwise product of the normalised maps) with
the rolled-out spatial self-attention of the Transformer (IQA-CR Fig. 2); ``--map gradcam``
shows plain Grad-CAM. The model reads the image as `contentiqa score` does (a native-resolution
model: photos over 2048 px downscaled; a fixed-size one: resized to its size); images above
--max-pixels (default 4 MP) are explained on a downscaled copy (said in the figure and here).

The score and category are those `contentiqa score` gives the image: computed by the same
runtime and precision (score's --runtime, --precision, --threads and defaults: ONNX Runtime on
a CPU, int8 where measured to keep the accuracy), named in the figure's title; the heatmaps are
PyTorch's (Grad-CAM needs its gradients), the category heatmap of that category.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._model_loading import add_scorer_args
from ._output import check_writable, check_writable_folder
from .common import finite_float, in_cli_words, megapixels, user_path
from ..utils.terminal import printable
from .main import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="heatmaps of where the model looked (Grad-CAM x attention)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", type=user_path, help="image file(s) to explain")
    add_scorer_args(p, " for the score (the heatmaps are PyTorch's either way)", onnx_files=False)
    p.add_argument("--out", "-o", type=user_path, metavar="PNG",
                   help="output PNG (one IMAGE only; default: <image name>_explain.png in --out-dir)")
    p.add_argument("--out-dir", type=user_path, metavar="DIR", default=None,
                   help="folder for the PNGs (default: the current folder); images of the same name get "
                        "_explain-2.png, -3, ... so no result overwrites another of the same run")
    p.add_argument("--target", choices=("quality", "category", "both"), default="both",
                   help="which heatmap(s) to show (default both; 'category' needs a model with a content head)")
    p.add_argument("--map", choices=("fused", "gradcam"), default="fused",
                   help="fused = Grad-CAM x attention rollout (default); gradcam = Grad-CAM alone")
    p.add_argument("--category", default=None, help="explain this category's logit instead of the predicted one")
    p.add_argument("--max-pixels", type=megapixels, default=4.0, metavar="MP",
                   help="explain images above MP megapixels on a downscaled copy (default 4; 0 = never downscale)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..utils.extras import require
    from ._model_loading import heatmap_model, load_scorer, scorer_kwargs

    if not args.images:
        raise UsageError("no IMAGE given")
    if args.out and len(args.images) > 1:
        raise UsageError("--out names one file: give one IMAGE (or leave --out out)")
    if args.out and Path(args.out).suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png file, not {args.out}")
    if args.max_pixels < 0:
        raise UsageError("--max-pixels must be 0 or more")
    if args.out and args.out_dir:
        raise UsageError("--out names the file, --out-dir the folder: give one")
    # The scorer `contentiqa score` would use with these flags (a misspelt model said before any
    # folder is made), and the PyTorch model for the heatmaps.
    kwargs = scorer_kwargs(args)
    require("torch", "heatmaps (Grad-CAM)")  # before any folder is made or graph built for the scores
    inputs = {_same(image) for image in args.images}
    if args.out:
        if _same(args.out) in inputs:
            raise UsageError(f"--out {args.out} is one of the images: name another file")
        check_writable(Path(args.out), "--out")  # before the model loads and the maps are made
    else:  # the current folder when no --out-dir: checked as well, before the work
        check_writable_folder(Path(args.out_dir) if args.out_dir else Path.cwd(), "--out-dir" if args.out_dir else "the current folder")
    notes: list[str] = []
    scorer = load_scorer(kwargs, notes, images=len(args.images))
    for note in notes:
        print(f"note: {printable(note)}", file=sys.stderr)
    model = heatmap_model(scorer, kwargs)
    if args.target in ("category", "both") and not model.has_content_head:
        if args.target == "category":
            raise UsageError(f"model {model.model_name} has no content head: use --target quality")
    if args.target == "quality" and not model.predicts_score:
        raise UsageError(f"model {model.model_name} predicts no quality score: use --target category")
    category = args.category
    if category is not None:
        if args.target == "quality":  # no category map to draw it in: said, not ignored
            raise UsageError("--category names the category map's category: --target quality draws none "
                             "(use --target category or both)")
        if category not in model.categories:
            raise UsageError(f"unknown category {category!r}; this model knows: {', '.join(model.categories) or 'none'}")
    targets = {"quality": ("quality",), "category": ("category",), "both": ("quality", "category")}[args.target]
    max_pixels = None if args.max_pixels == 0 else int(args.max_pixels * 1e6)

    from ._output import terminate_as_interrupt

    with terminate_as_interrupt():  # SIGTERM unwinds a figure's write as Ctrl-C does: no temporary left
        return _explain_each(args, scorer, model, targets, category, max_pixels, inputs)


def _explain_each(args: argparse.Namespace, scorer, model, targets: tuple[str, ...], category: str | None,
                  max_pixels: int | None, inputs: set[str]) -> int:
    """Score, explain and write a figure for each image; 1 when one failed (the rest go on)."""
    from ..data.imageio import ImageLoadError
    from ..explain import explain
    from ..models.ensemble import Ensemble

    failures = 0
    out_dir = Path(args.out_dir) if args.out_dir else Path.cwd()
    taken: set[str] = set()
    preds = scorer.run(list(args.images))  # as `contentiqa score` runs them
    assert preds is not None
    for image, pred in zip(args.images, preds):
        if pred.error is not None:
            # the limit explain keeps is score's default: no flag of this command raises it
            print(printable(f"{image}: {in_cli_words(pred.error, too_large='explain a smaller copy of it')}"),
                  file=sys.stderr)
            failures += 1
            continue
        try:
            exp = explain(model, image, targets=targets, category=category or pred.category, max_pixels=max_pixels,
                          exact_score=False).scored(pred, scorer.identity.label)
        except (ImageLoadError, ValueError, TypeError) as exc:
            print(printable(f"{image}: {getattr(exc, 'reason', exc)}"), file=sys.stderr)
            failures += 1
            continue
        except (MemoryError, RuntimeError) as exc:
            # Grad-CAM keeps every level's activations and gradients: a large photo can need more
            # memory than scoring it did. That photo fails; the others are still explained.
            if not _out_of_memory(exc):
                raise
            _free_device_memory()
            print(printable(f"{image}: not enough memory to explain it at this size: lower --max-pixels "
                            f"(now {'no limit' if max_pixels is None else f'{max_pixels / 1e6:g} MP'})"),
                  file=sys.stderr)
            failures += 1
            continue
        out = Path(args.out) if args.out else _unique_name(out_dir, Path(image).stem, taken)
        if _same(out) in inputs:  # x_explain.png given as an input too: never written over
            print(printable(f"{image}: its heatmap would replace the input {out}; explain it with --out"), file=sys.stderr)
            failures += 1
            continue
        try:
            exp.save_figure(out, target=args.target, which=args.map)
        except ValueError as exc:
            print(printable(f"{image}: {exc}"), file=sys.stderr)
            failures += 1
            continue
        except OSError as exc:
            print(printable(f"{image}: cannot write {out}: {exc.strerror or exc}"), file=sys.stderr)
            failures += 1
            continue
        print(printable(f"{image}: {exp.title()}"))
        order = "each member's, shallow to deep" if isinstance(model, Ensemble) else "shallow to deep"
        for target, shares in exp.level_shares.items():
            print(f"  {target} evidence by CNN level ({order}): {' / '.join(f'{v:.2f}' for v in shares)}")
        for note in exp.notes:
            print(f"  note: {note}")
        print(f"  wrote {printable(os.fspath(out))}")
    return 1 if failures else 0


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch (or Python) running out of memory, on the CPU or a GPU."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _same(path: str | os.PathLike) -> str:
    """One spelling per file (links and ``..`` resolved), to tell an output from an input."""
    return os.path.normcase(os.path.realpath(path))


def _unique_name(folder: Path, stem: str, taken: set[str]) -> Path:
    """``<stem>_explain.png`` in ``folder``, numbered when this run already wrote that name
    (a/x.JPG and b/x.JPG must not share one file); a file from an earlier run is replaced."""
    n = 1
    while True:
        name = f"{stem}_explain{'' if n == 1 else f'-{n}'}.png"
        if os.path.normcase(name) not in taken:
            taken.add(os.path.normcase(name))
            return folder / name
        n += 1
