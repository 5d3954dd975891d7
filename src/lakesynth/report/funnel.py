"""The yield funnel drawn and tabled (core/funnel.py computes it): the figure MLflow, the report notebook and
`lakesynth report` show, and its steps as rows."""

from __future__ import annotations

from typing import Any

from lakesynth.core.funnel import counts


def rows(f: dict[str, Any]) -> list[dict[str, Any]]:
    """The funnel as rows: generated, each step (in, dropped per reason, kept), the rows still pending (if any),
    then kept per split."""
    out = [{"step": "generated", "in": f["generated"], "dropped": 0, "kept": f["generated"], "reasons": ""}]
    for s in f["steps"]:
        reasons = counts(s["reasons"])
        out.append({"step": s["step"], "in": s["in"], "dropped": s["dropped"], "kept": s["kept"], "reasons": reasons})
    if f.get("pending"):  # passed every step that ran; a step ahead has not run yet
        out.append({"step": "pending", "in": f["pending"], "dropped": 0, "kept": 0, "reasons": ""})
    out.append({"step": "kept", "in": f["kept"], "dropped": 0, "kept": f["kept"], "reasons": counts(f["splits"])})
    return out


def figure(f: dict[str, Any]):
    """Bars from generated down to kept: what each step kept (green) and dropped (red, with its reasons), and the
    kept examples split by split at the bottom."""
    import matplotlib.pyplot as plt

    steps = f["steps"]
    labels = ["generated", *[s["step"] for s in steps], "splits"]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(labels) + 1.2))
    ax.barh(0, f["generated"], color="tab:blue")
    ax.text(f["generated"], 0, f" {f['generated']}", va="center")
    for i, s in enumerate(steps, 1):
        ax.barh(i, s["kept"], color="tab:green")
        ax.barh(i, s["dropped"], left=s["kept"], color="tab:red")
        why = counts(s["reasons"])
        ax.text(
            s["in"],
            i,
            f" {s['kept']} kept" + (f", {s['dropped']} dropped ({why})" if s["dropped"] else ""),
            va="center",
        )
    left = 0
    for j, (split, n) in enumerate(f["splits"].items()):
        ax.barh(len(labels) - 1, n, left=left, color=plt.cm.Greens(0.8 - 0.25 * (j % 3)))
        ax.text(left + n / 2, len(labels) - 1, f"{split} {n}", va="center", ha="center", color="white")
        left += n
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max(f["generated"], 1) * 1.9)  # room for the labels right of the bars
    ax.set_xlabel("rows")
    spend = f.get("spend", {})
    cost = (
        f"${spend['cost_per_1000_kept_usd']} per 1,000 kept"
        if "cost_per_1000_kept_usd" in spend
        else f"{spend['tokens_per_1000_kept']:,} tokens per 1,000 kept"
        if "tokens_per_1000_kept" in spend
        else "nothing kept"
    )
    ax.set_title(f"Yield funnel: {f['generated']} generated, {f['kept']} kept; {cost}")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.subplots_adjust(left=0.2, right=0.98)
    return fig
