"""A running gateway per module (refusals and Windows semantics share one)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import need_smbd
from tests.servers.gateway import Gateway


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    need_smbd()
    with Gateway() as gw:
        yield gw
