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
