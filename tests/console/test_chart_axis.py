import re
from datetime import date

import pytest

from console.charts import _nice_ceiling, stacked_bars


@pytest.mark.parametrize("peak", [0, 1, 3, 7, 17, 999, 25_000, 30_000, 123_456, 7_654_321])
def test_axis_top_covers_the_peak_on_round_steps(peak):
    top = _nice_ceiling(peak)
    assert top >= max(peak, 1)
    assert top % 4 == 0
    assert top < max(peak, 1) * 4 + 4  # never absurdly tall


@pytest.mark.parametrize("metric,peak", [("charge", 30_000), ("charge", 2_500_000), ("requests", 3), ("tokens", 123_457)])
def test_y_axis_labels_are_all_different(metric, peak):
    # given one bar
    day = date(2026, 11, 24)
    chart = stacked_bars([day], {"ve": {day: peak}}, metric=metric, period="day")
    # then the five gridline labels read five different values
    labels = re.findall(r'text-anchor="end" fill="#667085">([^<]+)</text>', chart.svg)
    assert len(labels) == 5 and len(set(labels)) == 5, labels
