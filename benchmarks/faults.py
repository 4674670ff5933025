"""Kill `contentiqa score` at random points and resume it: nothing may be lost, doubled or torn.

    python benchmarks/faults.py [--photos 200] [--rounds 2] [--seed 0] [--model iqa-cr]

Scores --photos real photos of ../shared/data/clive-dev/images once without interruption (the
reference), then, --rounds times: starts `contentiqa score PHOTOS -o OUT.csv` and stops it with
SIGINT, SIGTERM and SIGKILL (in a random order, each at a random moment: during start-up,
scoring or a save), resuming with `--resume` after each, and finally lets the resumed run
finish. After every stop the output must parse; at the end it must list every photo exactly
once, with the reference's score. Reports rows lost / duplicated (must be 0 / 0), files left
corrupt (must be 0), scores that differ from the reference, and stray temporary files.
Writes benchmarks/results/faults.json and faults.md.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, SHARED, command_line, md_table, positive_int, results_name, write_results

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


def score_cmd(photos: list[str], out: Path, model: str, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "contentiqa", "score", *photos, "--model", model, "-o", str(out), "-q",
           "--flush-every", "10"]
    return cmd + (["--resume"] if resume else [])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def read_rows(out: Path) -> list[dict] | None:
    """The rows of ``out`` ([] if absent); None if it does not parse (a torn file)."""
    from contentiqa.reporting.results import read_results

    if not out.exists():
        return []
    try:
        return read_results(out)
    except (ValueError, OSError):
        return None


def differs(score: float | None, reference: float | None) -> bool:
    """Whether a resumed run's score is not the uninterrupted run's: a missing score differs from a
    present one (0.0 is a score, not a missing one)."""
    if score is None or reference is None:
        return (score is None) != (reference is None)
    return abs(score - reference) > 1e-4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=positive_int, default=200)
    ap.add_argument("--rounds", type=positive_int, default=2, help="each round stops the run once with each signal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="iqa-cr")
    args = ap.parse_args()

    folder = SHARED / "data" / "clive-dev" / "images"
    if not folder.is_dir():
        sys.exit(f"benchmark skipped: real photos not found at {folder} (set CONTENTIQA_SHARED)")
    rng = random.Random(args.seed)
    photos = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png", ".bmp"))
    photos = sorted(rng.sample(photos, min(args.photos, len(photos))))

    with tempfile.TemporaryDirectory(prefix="contentiqa-faults-") as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        ref_out = tmp / "reference.csv"
        r = subprocess.run(score_cmd(photos, ref_out, args.model, False), env=env(), capture_output=True, text=True)
        ref_seconds = time.time() - t0
        if r.returncode != 0:
            sys.exit(f"reference run failed ({r.returncode}): {r.stderr[-2000:]}")
        reference = {row["path"]: row["score"] for row in read_rows(ref_out)}
        print(f"reference: {len(reference)} photos in {ref_seconds:.0f} s", flush=True)

        stops, rounds = [], []
        for k in range(args.rounds):
            out = tmp / f"round{k}" / "scores.csv"
            out.parent.mkdir()
            order = rng.sample(SIGNALS, len(SIGNALS))
            corrupt = 0
            for sig in order:
                resume = out.exists()
                before = read_rows(out) or []
                delay = rng.uniform(0.5, 0.25 * ref_seconds)  # start-up, scoring and saves alike
                p = subprocess.Popen(score_cmd(photos, out, args.model, resume), env=env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                time.sleep(delay)
                finished = p.poll() is not None
                t_sig = time.time()
                if not finished:
                    p.send_signal(sig)
                _, err = p.communicate()
                rows = read_rows(out)
                if rows is None:
                    corrupt += 1
                stops.append({
                    "round": k, "signal": sig.name, "after_s": round(delay, 2), "exit": p.returncode,
                    "finished_first": finished, "stop_s": round(time.time() - t_sig, 2),
                    "rows_before": len(before), "rows_after": None if rows is None else len(rows),
                    "corrupt": rows is None, "stderr_tail": err.strip().splitlines()[-1:] if err.strip() else [],
                })
                print(stops[-1], flush=True)
            final = subprocess.run(score_cmd(photos, out, args.model, out.exists()), env=env(), capture_output=True, text=True)
            rows = read_rows(out)
            if rows is None:
                corrupt += 1
                rows = []
            paths = [row["path"] for row in rows]
            lost = len(set(reference) - set(paths))
            dup = len(paths) - len(set(paths))
            differ = sum(1 for row in rows if row["path"] in reference and differs(row["score"], reference[row["path"]]))
            failed = sum(1 for row in rows if row.get("error"))
            stray = sorted(x.name for x in out.parent.iterdir() if x.name.endswith(".tmp"))
            rounds.append({"round": k, "order": [s.name for s in order], "final_exit": final.returncode,
                           "rows": len(rows), "lost": lost, "duplicated": dup, "corrupt_files": corrupt,
                           "scores_differing": differ, "failed_rows": failed, "stray_temp_files": stray})
            print(rounds[-1], flush=True)

    totals = {key: sum(r[key] for r in rounds) for key in ("lost", "duplicated", "corrupt_files", "scores_differing", "failed_rows")}
    totals["stray_temp_files"] = sum(len(r["stray_temp_files"]) for r in rounds)
    ok = totals["lost"] == totals["duplicated"] == totals["corrupt_files"] == totals["scores_differing"] \
        == totals["failed_rows"] == 0
    md = (
        f"# Kill and resume `contentiqa score` ({len(photos)} CLIVE photos, model {args.model}, CPU)\n\n"
        f"Command: `{command_line()}`\n\n"
        f"Reference run (uninterrupted): {ref_seconds:.0f} s. {len(stops)} stops ({args.rounds} round(s) of SIGINT, "
        f"SIGTERM and SIGKILL in random order, each at a random moment), each followed by `--resume`.\n\n"
        + md_table(["round", "signal", "after (s)", "exit", "rows before", "rows after", "output parses"],
                   [[str(s["round"]), s["signal"], f"{s['after_s']:.1f}", str(s["exit"]), str(s["rows_before"]),
                     str(s["rows_after"]), "no" if s["corrupt"] else "yes"] for s in stops])
        + "\n\n"
        + md_table(["round", "final exit", "rows", "lost", "duplicated", "corrupt files", "scores != reference",
                    "stray .tmp files"],
                   [[str(r["round"]), str(r["final_exit"]), str(r["rows"]), str(r["lost"]), str(r["duplicated"]),
                     str(r["corrupt_files"]), str(r["scores_differing"]), str(len(r["stray_temp_files"]))] for r in rounds])
        + f"\n\n**{'PASS' if ok else 'FAIL'}**: rows lost {totals['lost']}, duplicated {totals['duplicated']}, "
        f"files left corrupt {totals['corrupt_files']}, scores differing from the reference {totals['scores_differing']}, "
        f"rows failed {totals['failed_rows']}. "
        "Exit 130 = SIGINT and 143 = SIGTERM (progress saved), -9 = SIGKILL (rows since the last save, at most "
        "--flush-every 10, are scored again on resume); -15 / -2 = the signal came during start-up (imports, model "
        "loading), before that run had scored anything.\n"
    )
    write_results(results_name("faults", ap, args), {"photos": len(photos), "model": args.model, "reference_seconds": ref_seconds,
                             "stops": stops, "rounds": rounds, "totals": totals, "pass": ok, "command": command_line()}, md)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
