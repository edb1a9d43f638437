"""The one workdir-identity check (`hpm_jax.runtime.identity`): names every differing key and
the fix, compares nested records key by key, and can ignore keys only one side has."""

import pytest

from hpm_jax.runtime.identity import WorkdirMismatchError, check_identity, differences


def test_equal_records_pass_and_json_forms_compare_equal():
    check_identity({"a": (1, 2), "b": {"c": 1}}, {"a": [1, 2], "b": {"c": 1}}, what="w", fix="f")


def test_differences_name_dotted_keys_and_absent_ones():
    stored = {"model": {"head": "fc", "depth": 10}, "seed": 0}
    current = {"model": {"head": "hpm", "depth": 10}, "lr": 0.1}
    assert differences(stored, current) == [
        "lr: <absent> -> 0.1",
        "model.head: 'fc' -> 'hpm'",
        "seed: 0 -> <absent>",
    ]
    assert differences(stored, current, shared_only=True) == ["model.head: 'fc' -> 'hpm'"]


def test_the_error_names_what_the_changes_and_the_fix():
    with pytest.raises(WorkdirMismatchError, match=r"^DIR holds another run:\n  seed: 0 -> 1\nFix"):
        check_identity({"seed": 0}, {"seed": 1}, what="DIR holds another run", fix="Fix it.")
    with pytest.raises(ValueError, match=r"^W \(a: 0 -> 1; b: 0 -> 1; \.\.\.\); F$"):
        check_identity(dict.fromkeys("abc", 0), dict.fromkeys("abc", 1), what="W", fix="F",
                       inline=2)  # fmt: skip
