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


def test_rows_to_run_skip_the_done_ones_and_keep_to_the_filters():
    plan = study.plan()
    done = {r.key for r in plan if r.seed == 0}
    todo = study.to_run(done)
    assert todo == [r for r in plan if r.seed != 0] and todo
    assert study.to_run(set()) == plan
    seed_one = study.to_run(done, models=["mobilenet"], seeds=[1])
    assert seed_one and all(r.model == "mobilenet" and r.seed == 1 for r in seed_one)
    assert {r.recipe for r in seed_one} == {"ours", "paper"}
    assert study.to_run(done, models=["mobilenet"], recipes=["paper"], seeds=[1, 2]) == [
        r for r in plan if r.seed in (1, 2) and r.recipe == "paper"
    ]
    assert study.to_run(done, seeds=[0]) == []
