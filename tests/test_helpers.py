"""The test helpers themselves: a comparison that cannot fail would make every test built on it vacuous."""

import pytest
import torch

from helpers import assert_close, baseline_atol, max_abs_error


def test_assert_close_locates_the_worst_element():
    expected = torch.zeros(2, 3, 4, dtype=torch.float64)
    actual = expected.clone()
    actual[1, 2, 3] = 0.5
    actual[0, 0, 0] = 1e-9
    with pytest.raises(AssertionError, match=r"out: 2/24 elements \(8.33%\) off; max abs diff 5.000e-01 at index "
                                             r"\(1, 2, 3\) \(actual 0.5, expected 0\)"):
        assert_close(actual, expected, atol=1e-12, what="out")
    assert_close(actual, expected, atol=0.5)


def test_assert_close_treats_equal_infinities_as_equal_and_nan_as_off():
    expected = torch.tensor([float("-inf"), 1.0])
    assert_close(torch.tensor([float("-inf"), 1.0]), expected, atol=0.0)
    with pytest.raises(AssertionError, match="1/2 elements"):
        assert_close(torch.tensor([float("nan"), 1.0]), expected, atol=1.0)
    with pytest.raises(AssertionError, match="1/2 elements"):
        assert_close(torch.tensor([0.0, 1.0]), expected, atol=1.0)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.zeros(3), torch.zeros(2), atol=1.0)


def test_baseline_tolerance_is_twice_the_baseline_error_plus_the_floor():
    ref = torch.tensor([0.0, 2.0], dtype=torch.float64)
    base = torch.tensor([0.1, 2.0], dtype=torch.float64)
    assert max_abs_error(base, ref) == pytest.approx(0.1)
    assert baseline_atol(base, ref, torch.float32) == pytest.approx(0.2 + 2e-6)
