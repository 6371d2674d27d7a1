"""The admin charts' axes (issue 17): every tick label distinct, whole numbers on whole-number data."""

import re

from app.web.admin_charts import line_chart, stacked_bars


def _labels(svg: str) -> list[str]:
    return re.findall(r'text-anchor="(?:end|middle)">([^<]+)</text>', str(svg))


def _y_labels(svg: str) -> list[str]:
    return re.findall(r'text-anchor="end">([^<]+)</text>', str(svg))


def _x_labels(svg: str) -> list[str]:
    return re.findall(r'text-anchor="middle">([^<]+)</text>', str(svg))


def test_a_narrow_range_gets_as_many_decimals_as_its_ticks_need():
    svg = line_chart({"loss": [(1, 51.23), (2, 51.8), (3, 52.31)]})
    ys = _y_labels(svg)
    assert len(ys) == len(set(ys)) >= 3, ys
    assert all("." in y for y in ys), ys


def test_whole_number_data_gets_whole_number_ticks():
    svg = line_chart({"tokens": [(1, 3), (2, 4), (3, 5)]})
    assert all(re.fullmatch(r"-?\d+", v) for v in _y_labels(svg) + _x_labels(svg)), _labels(svg)
    assert len(_x_labels(svg)) == len(set(_x_labels(svg)))


def test_a_single_point_is_drawn():
    svg = str(line_chart({"kl": [(7, 0.5)]}))
    assert "<circle" in svg and "kl = 0.5 at step 7" in svg


def test_bar_counts_are_whole_numbers():
    from datetime import date

    svg = stacked_bars([(date(2026, 1, d), {"ranking": d}) for d in (1, 2, 3)], kinds=["ranking"])
    ys = _y_labels(svg)
    assert all(re.fullmatch(r"\d+", y) for y in ys) and len(ys) == len(set(ys)), ys


def _point_y_and_axis(svg: str) -> tuple[float, float, float]:
    """The last point's y and the y of the top and bottom grid lines."""
    cy = float(re.search(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg).group(1))
    grid = [float(y) for y in re.findall(r'<line class="grid" x1="\d+" x2="\d+" y1="([\d.]+)"', svg)]
    return cy, min(grid), max(grid)


def test_a_single_value_stands_inside_its_axis_with_its_own_label():
    for value in (0.5, 7.0, 0.0, -0.3, 1e-9, 3):
        svg = str(line_chart({"kl": [(7, value)]}))
        cy, top, bottom = _point_y_and_axis(svg)
        assert top < cy < bottom, (value, cy, top, bottom)  # was: on the bottom edge of a 0..1 axis
        ys = _y_labels(svg)
        assert len(ys) == len(set(ys)) >= 3, (value, ys)
        assert float(ys[len(ys) // 2]) == value, (value, ys)
        cx = float(re.search(r'<circle cx="([\d.]+)"', svg).group(1))
        assert 48 < cx < 560 - 12, "one step stands inside the x axis too"


def test_tiny_values_get_distinct_labels_that_read_their_values():
    svg = str(line_chart({"kl": [(1, 2e-5), (2, 2.6e-5), (3, 3e-5)]}))
    ys = _y_labels(svg)
    assert ys == ["2.00e-5", "2.25e-5", "2.50e-5", "2.75e-5", "3.00e-5"], ys  # was 0, 0, 0, 0, 0
    svg = str(line_chart({"kl": [(1, 2e-5), (2, 2.0001e-5)]}))
    ys = _y_labels(svg)
    assert len(ys) == len(set(ys)) >= 3 and all(float(y) > 0 for y in ys), ys
    svg = str(line_chart({"loss": [(1, 0.0), (2, 4e-4)]}))
    assert _y_labels(svg) == ["0", "1e-4", "2e-4", "3e-4", "4e-4"]


def test_a_deleted_model_version_looks_deleted_in_the_lineage():
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from app.models import ModelKind
    from app.web.admin_charts import lineage_graph

    def version(id_, kind, parents, deleted=False, metrics=None):
        return SimpleNamespace(
            id=id_,
            kind=kind,
            name=f"v{id_}",
            parent_ids=parents,
            metrics=metrics or {"train_loss": 1.5},
            source="HuggingFaceTB/SmolLM2-135M" if kind == ModelKind.base else "/data/models/x",
            deleted_at=datetime(2026, 12, 1, tzinfo=UTC) if deleted else None,
        )

    svg = str(
        lineage_graph(
            [
                version(1, ModelKind.base, []),
                version(2, ModelKind.sft, [1], deleted=True),
                version(3, ModelKind.ppo, [2]),
            ]
        )
    )
    boxes = re.findall(r'<a href="/admin/models/(\d+)"><g( class="deleted")?>(.*?)</g></a>', svg)
    shown = {int(i): (bool(cls), body) for i, cls, body in boxes}
    assert [i for i, (deleted, _) in shown.items() if deleted] == [2]
    body = shown[2][1]
    assert 'stroke-dasharray="5 4"' in body and "line-through" in body and ">deleted</text>" in body
    assert "<title>deleted · /data/models/x</title>" in body
    assert "train_loss 1.5" in shown[3][1] and "dasharray" not in shown[3][1] and "deleted" not in shown[1][1]
    assert svg.count("marker-end") == 2, "the arrows through the deleted version stay"
