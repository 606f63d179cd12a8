from __future__ import annotations

import pytest

from tests.media.peers import Clip, encode_clip


@pytest.fixture(scope="session")
def clip() -> Clip:
    return encode_clip()
