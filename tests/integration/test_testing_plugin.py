"""The pytest plugin as a user meets it: docs/testing.md's example, run by pytest in a subprocess of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = re.compile(r"<!-- example: (\S+) -->\n```python\n(.*?)```", re.S)
RUN_TIMEOUT_S = 240.0

WRONG_EXPECTATION = '''
"""A test whose expectation is wrong: it records deposits of 10, but deposits 5."""


def test_a_wrong_expectation_fails(spacegrid_grid, spacegrid_client, spacegrid_history):
    """The history check fails: the balance is lower than the deposits the test believes were acknowledged."""
    grid = spacegrid_grid(app="bank:space", pus=1)
    client = spacegrid_client(grid)
    for _ in range(3):
        with spacegrid_history.incr("bob", 10) as op:
            op.returned(client.execute("deposit", "bob", 5))
    spacegrid_history.check(final_counters={"bob": client.get("accounts", "bob")})
'''


def examples() -> dict[str, str]:
    """docs/testing.md's example files, by name."""
    return dict(EXAMPLE.findall((ROOT / "docs" / "testing.md").read_text()))


def test_the_docs_example_passes_against_a_real_grid_with_its_owner_killed(pytester: pytest.Pytester) -> None:
    """docs/testing.md's bank.py and test_bank.py, copied into an empty directory (no data dir, no conftest) and run
    by pytest in a subprocess, pass: the plugin's fixtures start a grid, kill alice's owner and check the history;
    the PU logs are kept where --spacegrid-keep-logs says."""
    files = examples()
    assert set(files) == {"bank.py", "test_bank.py"}
    pytester.makepyfile(**{name.removesuffix(".py"): text for name, text in files.items()})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--spacegrid-keep-logs", "kept",
                                           timeout=RUN_TIMEOUT_S)
    result.assert_outcomes(passed=1)
    kept = list((pytester.path / "kept").glob("*/grid0/pu-*.log"))
    assert len(kept) == 2, kept


def test_a_wrong_expectation_fails_with_the_checkers_counterexample(pytester: pytest.Pytester) -> None:
    """A user's test that records deposits of 10 while the handler is asked for 5 fails with a HistoryViolation
    naming the key and the under-count, and its report shows the PU log."""
    pytester.makepyfile(bank=examples()["bank.py"], test_wrong=WRONG_EXPECTATION)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT_S)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*HistoryViolation: 1 history check(s) failed*",
                                 "*violation counter bob: under-count: acknowledged increments lost*",
                                 "*spacegrid PU logs*"])


def test_the_readme_shows_the_docs_example_test() -> None:
    """README's "Testing your own handlers" shows docs/testing.md's test_bank.py verbatim, so the two can't drift."""
    assert examples()["test_bank.py"] in (ROOT / "README.md").read_text()
