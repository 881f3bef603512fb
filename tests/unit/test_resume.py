"""The README lists what a resume may change from the one list the check uses."""

from amint_pl.checkpoints import RESUMABLE_KEYS
from tests.helpers import REPO


def test_readme_lists_the_keys_a_resume_may_change():
    readme = " ".join((REPO / "README.md").read_text().split())
    listed = ", ".join(f"`{key}`" for key in RESUMABLE_KEYS)
    assert f"Only {listed} may change" in readme
