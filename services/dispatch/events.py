"""The events of the dispatch service: those it publishes (stream DISPATCH)."""

from __future__ import annotations

from alliance.v1 import dispatch_events_pb2
from services.foundation.events import Event, EventCatalog

ORDER_OPENED = Event("dispatch.v1.order_opened", dispatch_events_pb2.OrderOpened)
ORDER_TAKEN = Event("dispatch.v1.order_taken", dispatch_events_pb2.OrderTaken)
ORDER_ESCALATED = Event("dispatch.v1.order_escalated", dispatch_events_pb2.OrderEscalated)
CUTOFF_COMPLETED = Event("dispatch.v1.cutoff_completed", dispatch_events_pb2.CutoffCompleted)
ORDER_COMPLETED = Event("dispatch.v1.order_completed", dispatch_events_pb2.OrderCompleted)
DISPATCH = EventCatalog("dispatch", [ORDER_OPENED, ORDER_TAKEN, ORDER_ESCALATED, CUTOFF_COMPLETED, ORDER_COMPLETED])
