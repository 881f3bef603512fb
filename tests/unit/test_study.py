"""The reproduction study's resume decision: a row whose run directory holds an interrupted or
failed run resumes it; only a completed run counts as done."""

import json
import sys

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "experiments" / "reproduction"))
import study  # noqa: E402  (experiments/ is no package)


def test_only_a_completed_run_counts_as_done(tmp_path):
    assert not study.completed(tmp_path)
    for status, done in (("failed", False), ("running", False), ("completed", True)):
        (tmp_path / "results.json").write_text(json.dumps({"status": status}))
        assert study.completed(tmp_path) is done, status
