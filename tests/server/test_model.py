"""A loaded version's batching on the device image path."""

from __future__ import annotations

import logging

import pytest

from lens_server.config import BatchConfig
from lens_server.model import _overlapping


def test_device_decoding_raises_instances_to_two_and_says_so(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="lens_server.model"):
        assert _overlapping(BatchConfig(instances=1), "tiny:1/image").instances == 2
    assert "tiny:1/image: instances raised from 1 (configured) to 2" in caplog.text
    caplog.clear()
    config = BatchConfig(instances=3)
    with caplog.at_level(logging.INFO, logger="lens_server.model"):
        assert _overlapping(config, "tiny:1/image") is config
    assert not caplog.records
