"""How the ImageNet pseudo-labels of clive-dev (benchmarks/results/clive_content_labels.csv, what
the shipped CLIVE iqa-cr learnt from) agree with people's scene labels (scene_labels.csv), and
what people call the photos the pseudo-labeller calls `vehicle` (a category LIQE's scenes lack).

    python benchmarks/content_labels_agreement.py

Writes benchmarks/results/content_labels_agreement.{json,md}.
"""
from __future__ import annotations

import pandas as pd

from common import CLIVE_CSV, RESULTS, command_line, md_table, require_clive, write_results


def main() -> None:
    from contentiqa.data import join_labels, load_dataset
    from contentiqa.data.labels import acceptable_sets

    require_clive()
    root = CLIVE_CSV.parent
    table = load_dataset("csv", CLIVE_CSV).table
    human = join_labels(table, root / "scene_labels.csv", root)
    pseudo = join_labels(table, RESULTS / "clive_content_labels.csv", root)
    df = pd.DataFrame({"human": human["category"], "sets": acceptable_sets(human["categories"]),
                       "pseudo": pseudo["category"]}).dropna(subset=["human", "pseudo"])
    top1 = float((df["pseudo"] == df["human"]).mean())
    acceptable = float(sum(p in s for p, s in zip(df["pseudo"], df["sets"])) / len(df))
    vehicle = df[df["pseudo"] == "vehicle"]
    people = vehicle["human"].value_counts()
    per_class = {c: {"n_human": int((df["human"] == c).sum()), "n_pseudo": int((df["pseudo"] == c).sum()),
                     "recall": float((df.loc[df["human"] == c, "pseudo"] == c).mean()) if (df["human"] == c).any() else None}
                 for c in sorted(set(df["human"]) | set(df["pseudo"]))}
    rows = [[c, v["n_human"], v["n_pseudo"], "–" if v["recall"] is None else f"{v['recall']:.2f}"] for c, v in per_class.items()]
    md = ("# ImageNet pseudo-labels vs people's scene labels (clive-dev)\n\n"
          f"{len(df)} photos with both. Pseudo-label = people's main scene: **{top1:.3f}**; pseudo-label among "
          f"the photo's scenes: **{acceptable:.3f}**.\n\n"
          + md_table(["category", "photos (people, main scene)", "photos (pseudo-labels)", "recall of the pseudo-labels"], rows)
          + f"\nThe {len(vehicle)} photos pseudo-labelled `vehicle` are, for people: "
          + ", ".join(f"{k} {v}" for k, v in people.items())
          + ". So a head trained on human labels drops `vehicle` (nine categories): people file vehicle photos under "
            "the scene around them.\n\n"
          f"Command: `{command_line()}`.\n")
    write_results("content_labels_agreement", {"n": len(df), "top1": top1, "acceptable": acceptable,
                                               "vehicle_as_people_see_it": people.to_dict(), "per_class": per_class}, md)


if __name__ == "__main__":
    import argparse

    # no options: --help prints what it does instead of starting the run
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
