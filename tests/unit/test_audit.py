"""How the audit reads class folders (by the names the data set gives its classes), and its
progress setting."""

import pytest

from amint_pl.audit import parse_args
from amint_pl.data.audit_inputs import Classes
from amint_pl.errors import ConfigError


def test_class_folders_are_read_by_the_names_the_data_set_gives_its_classes():
    numbered = Classes(tuple(str(i) for i in range(10)))  # digits, MNIST, CIFAR-10, ...
    assert [numbered.label(n) for n in ("3", "03", "10", "three")] == [3, 3, None, None]
    gtsrb = Classes(tuple(f"{i:05d}" for i in range(43)))
    assert [gtsrb.label(n) for n in ("00007", "7", "43")] == [7, 7, None]
    # An image folder's classes are its sorted folder names: "10" sorts before "2".
    folders = Classes(("0", "1", "10", "2"))
    assert [folders.label(n) for n in ("10", "010", "2", "3")] == [2, 2, 3, None]
    # Named classes (Tiny ImageNet's wnids, a user's folders): by name, or by index.
    named = Classes(("cat", "dog"))
    assert [named.label(n) for n in ("dog", "0", "2", "Dog")] == [1, 0, None, None]


@pytest.mark.parametrize("progress", ["-1", "soon", "inf", "nan"])
def test_a_progress_interval_that_is_no_number_of_seconds_is_refused(progress):
    with pytest.raises(ConfigError, match=f"progress={progress} must be a number of seconds >= 0"):
        parse_args(["checkpoint=a.ckpt", "inputs=x.png", f"progress={progress}"])
    assert parse_args(["checkpoint=a.ckpt", "inputs=x.png"]).progress_s == 10
    assert parse_args(["checkpoint=a.ckpt", "inputs=x.png", "progress=0"]).progress_s == 0
