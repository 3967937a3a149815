"""Transaction ids and protobuf timestamps, the same for every ledger write."""

from __future__ import annotations

import uuid
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def new_id() -> str:
    return uuid.uuid4().hex


def ts(when: datetime | None) -> Timestamp | None:
    if when is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp
