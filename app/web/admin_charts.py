"""Server-rendered SVG charts for the admin pages: no chart library, no JavaScript.

Every function returns Markup of one <svg> that scales to its container (viewBox)."""

import math
from datetime import date
from html import escape

from markupsafe import Markup

PALETTE = ["#3056d3", "#e07a1f", "#1f7a4d", "#b42318", "#7a3ee0", "#0e8fa3", "#9a6200", "#5d6679"]
KIND_COLORS = {"demonstration": "#3056d3", "ranking": "#e07a1f", "comparison": "#1f7a4d"}
MODEL_COLORS = {"base": "#5d6679", "sft": "#3056d3", "reward": "#e07a1f", "ppo": "#1f7a4d"}


def _nice_ticks(lo: float, hi: float, n: int = 4, *, integer: bool = False) -> list[float]:
    """About n+1 round ticks from at or below lo to at or above hi; with integer, whole-number
    steps only (steps, counts: no tick at 2.5). A single value (or a span too small for a float to
    step through) gets an axis around it, the value in the middle, not at its bottom edge."""
    if hi - lo <= abs(lo) * 1e-9:
        pad = max(abs(lo) * 0.1, 1.0 if integer else 0.0) or 1.0
        lo, hi = lo - pad, lo + pad
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in steps if m * mag >= raw)
    if integer:
        step = max(1, round(step))
    first = math.floor(lo / step)
    ticks = [_clean(first * step)]
    while ticks[-1] < hi - step * 1e-9:  # the last tick is at or above the highest value
        ticks.append(_clean((first + len(ticks)) * step))
    return ticks


def _clean(value: float) -> float:
    """The tick without float noise (0.30000000000000004 -> 0.3), at any scale (1e-9 as well as 1e9)."""
    return float(f"{value:.12g}")


def _tick_labels(ticks: list[float]) -> list[str]:
    """Labels that show each tick's own value: as many decimals as the step between ticks needs
    (a range of 51.2-52.4 reads 51.2, 51.4 ... rather than 51, 51, 52, 52); tiny steps in
    scientific notation (a KL of 2e-5 to 3e-5 reads 2.0e-5, 2.5e-5 ... rather than 0, 0, 0)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    biggest = max(abs(t) for t in ticks)
    if biggest >= 10_000_000 and step >= 1_000_000:
        digits = _decimals(step / 1_000_000)
        return [f"{t / 1_000_000:.{digits}f}M" for t in ticks]
    if biggest >= 10_000 and step >= 1000:
        digits = _decimals(step / 1000)
        return [f"{t / 1000:.{digits}f}k" for t in ticks]
    if step < 1e-3:
        exponent = math.floor(math.log10(step))
        extra = _decimals(_clean(step / 10**exponent))  # 1 for a step of 2.5e-6
        return [
            "0" if t == 0 else _short_exponent(f"{t:.{max(math.floor(math.log10(abs(t))) - exponent + extra, 0)}e}")
            for t in ticks
        ]
    digits = _decimals(step)
    return [f"{t:.{digits}f}" for t in ticks]


def _short_exponent(text: str) -> str:
    """2.5e-06 -> 2.5e-6."""
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def _decimals(step: float) -> int:
    """Decimals that write `step` exactly (0.25 -> 2, 5 -> 0), at most 6."""
    text = f"{step:.6f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def _is_integer(values: list[float]) -> bool:
    return all(float(v).is_integer() for v in values)


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    width: int = 560,
    height: int = 220,
    x_label: str = "step",
    empty: str = "No values yet.",
    label: str = "",
) -> Markup:
    """One or more lines over a shared x axis (training steps)."""
    points = [p for pts in series.values() for p in pts if math.isfinite(p[1])]
    if not points:
        return Markup(
            f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">{escape(empty)}</text></svg>'
        )
    left, right, top, bottom = 48, 12, 10, 26
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:  # one step: it stands in the middle (a step 0 at the left edge)
        x0, x1 = max(x0 - 1, min(x0, 0)), x0 + 1
    yticks = _nice_ticks(min(ys), max(ys), integer=_is_integer(ys))
    y0, y1 = yticks[0], yticks[-1]
    if y1 == y0:
        y1 = y0 + 1
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">']
    for t, text in zip(yticks, _tick_labels(yticks), strict=True):
        out.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>'
            f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{text}</text>'
        )
    xticks = _nice_ticks(x0, x1, 5, integer=_is_integer(xs))
    for t, text in zip(xticks, _tick_labels(xticks), strict=True):
        if x0 <= t <= x1:
            out.append(f'<text x="{sx(t):.1f}" y="{height - 8}" text-anchor="middle">{text}</text>')
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted((x, y) for x, y in pts if math.isfinite(y))
        if not pts:
            continue
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(pts))
        out.append(
            f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round">'
            f"<title>{escape(name)}</title></path>"
        )
        lx, ly = pts[-1]
        out.append(
            f'<circle cx="{sx(lx):.1f}" cy="{sy(ly):.1f}" r="3" fill="{color}">'
            f"<title>{escape(name)} = {ly:.4g} at {x_label} {lx:g}</title></circle>"
        )
    out.append("</svg>")
    return Markup("".join(out))


def stacked_bars(
    days: list[tuple[date, dict[str, int]]], *, kinds: list[str], width: int = 900, height: int = 220
) -> Markup:
    """Submissions per day, one stacked bar per day, one color per kind."""
    left, right, top, bottom = 44, 8, 10, 26
    totals = [sum(counts.get(k, 0) for k in kinds) for _, counts in days]
    yticks = _nice_ticks(0, max(totals + [1]), integer=True)
    ymax = yticks[-1] or 1
    pw, ph = width - left - right, height - top - bottom
    slot = pw / max(1, len(days))
    bar = max(2.0, slot * 0.7)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="Submissions per day">']
    for t, text in zip(yticks, _tick_labels(yticks), strict=True):
        y = top + ph - t / ymax * ph
        out.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{text}</text>'
        )
    label_every = max(1, math.ceil(len(days) / 10))
    for i, (day, counts) in enumerate(days):
        x = left + i * slot + (slot - bar) / 2
        y = top + ph
        for kind in kinds:
            n = counts.get(kind, 0)
            if not n:
                continue
            h = n / ymax * ph
            y -= h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" rx="1.5" '
                f'fill="{KIND_COLORS.get(kind, "#999")}"><title>{day.isoformat()}: {n:,} {kind}s</title></rect>'
            )
        if i % label_every == 0:
            out.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - 8}" text-anchor="middle">{day.strftime("%b %d")}</text>'
            )
    out.append("</svg>")
    return Markup("".join(out))


def lineage_graph(versions: list, *, highlight: int | None = None) -> Markup:
    """Model versions as boxes in columns base -> sft -> reward -> ppo, arrows from parents.

    `versions` are ModelVersion rows; each box links to the version's row on the models page."""
    columns = ["base", "sft", "reward", "ppo"]
    by_col: dict[str, list] = {c: [] for c in columns}
    for v in sorted(versions, key=lambda v: v.id):
        by_col[v.kind.value].append(v)
    box_w, box_h, gap_x, gap_y, top = 190, 54, 70, 16, 30
    rows = max([len(c) for c in by_col.values()] + [1])
    width = len(columns) * box_w + (len(columns) - 1) * gap_x + 20
    height = top + rows * (box_h + gap_y) + 10
    pos = {}
    for ci, col in enumerate(columns):
        for ri, v in enumerate(by_col[col]):
            pos[v.id] = (10 + ci * (box_w + gap_x), top + ri * (box_h + gap_y))
    out = [
        f'<svg class="chart lineage-svg" viewBox="0 0 {width} {height}" width="{width}" role="img" '
        'aria-label="Model lineage"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8a94a6"/>'
        "</marker></defs>"
    ]
    for ci, col in enumerate(columns):
        out.append(
            f'<text x="{10 + ci * (box_w + gap_x) + box_w / 2}" y="16" text-anchor="middle" '
            f'style="font-weight:600;text-transform:uppercase;letter-spacing:.05em">{col}</text>'
        )
    for v in versions:
        for pid in v.parent_ids or []:
            if pid in pos and v.id in pos:
                (px, py), (cx, cy) = pos[pid], pos[v.id]
                x1, y1, x2, y2 = px + box_w, py + box_h / 2, cx, cy + box_h / 2
                if x2 <= x1:  # same column (e.g. sft from sft): route around the right side
                    x1, x2 = px + box_w, cx + box_w
                    mid = x1 + 30.0
                    d = f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"
                else:
                    mid = (x1 + x2) / 2
                    d = f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2 - 2},{y2}"
                out.append(f'<path d="{d}" fill="none" stroke="#8a94a6" stroke-width="1.5" marker-end="url(#arrow)"/>')
    for v in versions:
        x, y = pos[v.id]
        # A deleted version (a tombstone kept for the lineage of what came from it) is grey, dashed and
        # says so: its files are gone and no run may use it.
        deleted = v.deleted_at is not None
        color = "#a3aab8" if deleted else MODEL_COLORS.get(v.kind.value, "#5d6679")
        metric = "deleted" if deleted else _headline_metric(v.metrics or {})
        stroke = ' stroke-width="3"' if v.id == highlight else ' stroke-width="1.5"'
        if deleted:
            stroke += ' stroke-dasharray="5 4"'
        fill, ink = ("#f3f4f7", "#6b7385") if deleted else ("#fff", "#1d2433")
        title = f"deleted · {v.source}" if deleted else v.source
        group = '<g class="deleted">' if deleted else "<g>"
        strike = ";text-decoration:line-through" if deleted else ""
        out.append(
            f'<a href="/admin/models/{v.id}">{group}<rect x="{x}" y="{y}" '
            f'width="{box_w}" height="{box_h}" rx="8" fill="{fill}" stroke="{color}"{stroke}/>'
            f'<rect x="{x}" y="{y}" width="6" height="{box_h}" rx="3" fill="{color}"/>'
            f'<text x="{x + 14}" y="{y + 21}" style="fill:{ink};font-weight:600;font-size:12px'
            f'{strike}">#{v.id} {escape(v.name[:22])}</text>'
            f'<text x="{x + 14}" y="{y + 40}">{escape(metric)}</text><title>{escape(title)}</title></g></a>'
        )
    out.append("</svg>")
    return Markup("".join(out))


HEADLINE = [
    "win_rate",
    "reward_win_rate",
    "accuracy",
    "valid_accuracy",
    "best_valid_loss",
    "valid_loss",
    "reward",
    "mean_reward",
    "kl",
    "train_loss",
    "loss",
]
"""The metrics that say most about a model version, best first."""


def headline_metrics(metrics: dict, n: int = 3) -> list[tuple[str, float]]:
    numeric = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    picked = [(k, numeric[k]) for k in HEADLINE if k in numeric]
    return (picked or list(numeric.items()))[:n]


def _headline_metric(metrics: dict) -> str:
    top = headline_metrics(metrics, 1)
    return f"{top[0][0]} {top[0][1]:.3g}" if top else "no metrics"
