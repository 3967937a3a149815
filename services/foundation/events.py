"""Event contracts: a subject and its protobuf message type, declared once by the producer.

    AWARDED = Event("points.v1.awarded", points_events_pb2.PointsAwarded)
    CATALOG = EventCatalog("points", [AWARDED, EXPIRED, ...])

Subjects read `<domain>.v1.<event>`; a service publishes only its own domains' events (the host
creates one JetStream stream per domain of its catalogs). A consumer names the subject and the
message type it expects from the protos, never the producer's module: services share contracts
(`protos/`), not code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message, covariant=True)

# v1 only: a domain's stream holds `<domain>.v1.>`; a v2 contract will come with its stream change.
_SUBJECT = re.compile(r"^[a-z][a-z0-9_]*\.v1\.[a-z][a-z0-9_]*$")


def domain_of(subject: str) -> str:
    return subject.split(".", 1)[0]


@dataclass(frozen=True)
class Event(Generic[M]):
    subject: str
    message_type: type[M]

    def __post_init__(self) -> None:
        if not _SUBJECT.match(self.subject):
            raise ValueError(f"event subject {self.subject!r} must read <domain>.v1.<event>")

    @property
    def domain(self) -> str:
        return domain_of(self.subject)

    @property
    def type_name(self) -> str:
        return self.message_type.DESCRIPTOR.full_name

    def check(self, message: Message) -> None:
        """A message of another type on this subject would be parked by every consumer: refuse it here."""
        if message.DESCRIPTOR.full_name != self.type_name:
            raise TypeError(f"{self.subject} carries {self.type_name}, not {message.DESCRIPTOR.full_name}")


class EventCatalog:
    """The events of one domain that one service produces."""

    def __init__(self, domain: str, events: Iterable[Event[Message]]) -> None:
        self.domain = domain
        self.events = tuple(events)
        for event in self.events:
            if event.domain != domain:
                raise ValueError(f"{event.subject} is not an event of the {domain} domain")

    @property
    def subjects(self) -> list[str]:
        return [e.subject for e in self.events]
