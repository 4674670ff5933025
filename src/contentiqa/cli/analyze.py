"""``contentiqa analyze-intelligibility DATA.csv --out DIR``: how intelligibility (an ImageNet
classifier's top-1 confidence) relates to quality (MOS), as in IE-IQA §3.1 / Fig. 2A-B."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import user_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze-intelligibility",
        help="relate an ImageNet classifier's top-1 confidence to MOS (IE-IQA Fig. 2)",
        description=(
            "Compute an ImageNet classifier's top-1 confidence for every image of a dataset "
            "(resized to 224x224), then the mean confidence per MOS interval and the mean MOS "
            "per confidence interval (6 equal intervals each), and their Spearman correlation. "
            "Writes intelligibility.csv, by_mos_bin.csv, by_confidence_bin.csv, summary.json "
            "and intelligibility.png to --out."
        ),
    )
    p.add_argument("data", type=user_path, help="a CSV of image,mos (paths relative to the CSV), or a dataset root with --dataset")
    p.add_argument("--out", type=user_path, required=True, help="output folder")
    p.add_argument("--dataset", default="csv", help="dataset loader for DATA (default: csv)")
    p.add_argument("--bins", type=int, default=6, help="number of equal intervals (default 6)")
    p.add_argument(
        "--confidence-range", choices=("data", "unit"), default="data",
        help="confidence intervals over [min, max] of the confidences (data, default) or [0, 1] (unit)",
    )
    p.add_argument("--skip-missing", action="store_true",
                   help="drop images whose file is missing or not readable (permissions) with a warning instead of failing")
    p.add_argument("--backbone", default="efficientnet_lite0", help="ImageNet classifier (default efficientnet_lite0, offline)")
    p.add_argument("--image-size", type=int, default=224, help="side the images are resized to (default 224)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-plot", action="store_true", help="skip intelligibility.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.intelligibility import OUTPUT_FILES, analyze_intelligibility, write_intelligibility_analysis
    from ._output import check_writable_folder
    from .common import load_data, say_failed
    from .main import UsageError

    for option, value in (("--bins", args.bins), ("--image-size", args.image_size),
                          ("--batch-size", args.batch_size), ("--workers", args.workers)):
        # --workers 0 would run as 1 (the decoding pool always has a thread): no mode of its own
        if value < 1:
            raise UsageError(f"{option} must be at least 1")
        if value > 100_000:  # a typo of many digits: a traceback (or a memory error) deep in the work
            raise UsageError(f"{option} {value} is more than this command can use")
    if args.threads is not None:
        from ._model_loading import check_threads

        check_threads(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    data = Path(args.data)
    try:
        dataset = load_data(args, option="")  # --skip-missing, and errors that name the file (DATA is no --data)
    except OSError as exc:  # a loader's own file (not an image) missing or unreadable
        raise UsageError(f"cannot read dataset {data}: {exc}") from None
    classifier, mean, std, names = _classifier(args.backbone)
    out = Path(args.out)
    clash = next((n for n in OUTPUT_FILES.values() if os.path.realpath(out / n) == os.path.realpath(data)), None)
    if clash is not None:  # the per-image results would replace the dataset they were read from
        raise UsageError(f"--out {out} would write its {clash} over DATA {data}: choose another folder")
    out = check_writable_folder(out, "--out")  # before any image is scored
    try:
        result = analyze_intelligibility(
            dataset,
            n_bins=args.bins,
            confidence_range=args.confidence_range,
            name=str(data),
            classifier=classifier,
            mean=mean,
            std=std,
            class_names=names,
            batch_size=args.batch_size,
            size=args.image_size,
            workers=args.workers,
            progress=not args.quiet,
        )
    except ValueError as exc:  # too few images scored, columns missing: the message names the file
        raise UsageError(str(exc)) from None
    result.summary["classifier"] = args.backbone  # the library says 'custom' for a classifier passed in
    try:
        files = write_intelligibility_analysis(result, out, plot=not args.no_plot)
    except OSError as exc:  # the folder went away or filled up while scoring
        raise UsageError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    s = result.summary
    say_failed(result.per_image, f"all in {files['per_image']}")
    print(f"{s['n_scored']} images scored ({s['n_failed']} failed); Spearman(confidence, MOS) = {s['spearman']:.4f}")
    print("mean top-1 confidence per MOS interval:")
    for _, r in result.by_mos_bin.iterrows():
        print(f"  [{r['low']:8.3f}, {r['high']:8.3f}]  n={int(r['count']):5d}  confidence={r['mean_confidence']:.4f}")
    print("mean MOS per confidence interval:")
    for _, r in result.by_confidence_bin.iterrows():
        print(f"  [{r['low']:.4f}, {r['high']:.4f}]  n={int(r['count']):5d}  MOS={r['mean_mos']:.3f}")
    print("wrote", ", ".join(str(p) for p in files.values()))
    return 1 if s["n_failed"] else 0


def _classifier(backbone: str) -> tuple:
    """``(classifier, mean, std, class names)`` for ``--backbone``, built before any image is
    read so that a misspelt or unavailable name is a usage error listing the choices."""
    from ..analysis.intelligibility import _default_classifier
    from ..backbones import WeightsUnavailableError, list_backbones
    from .main import UsageError

    try:
        return _default_classifier(backbone)
    except WeightsUnavailableError as exc:  # its message lists the offline choices
        raise UsageError(f"--backbone {backbone}: {exc}") from None
    except ValueError as exc:  # an unknown name: its message lists the choices
        offline = ", ".join(list_backbones(pretrained_offline=True)) or "none installed"
        raise UsageError(f"--backbone {backbone}: {exc} (offline: {offline})") from None
