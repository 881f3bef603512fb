"""Progress off a terminal: decoding says how far it is in plain lines, no bar drawn into a file."""

import io
import logging
import re
import sys

from amint_pl.data.cache import PROGRESS_MIN_IMAGES, progress_bar
from amint_pl.status import PROGRESS_LOGGER


def test_decoding_off_a_terminal_says_how_far_it_is(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # as `2> file`: no terminal for Rich
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    n = PROGRESS_MIN_IMAGES
    with progress_bar(n, "decoding train") as advance:
        for _ in range(4):
            advance(n // 4)
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert lines[0] == f"decoding train: {n} images"
    assert re.match(
        rf"decoding train: {n}/{n} images \| \d+ images/s \| elapsed \S+ ETA 0s", lines[-1]
    )
    assert sys.stderr.getvalue() == ""  # no bar drawn into the file
