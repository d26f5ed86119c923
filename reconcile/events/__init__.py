"""Events out: corrective events (CloudEvents), and the transports the relay publishes with."""

from .cloudevent import CorrectiveEvent, build_event, event_id, message_key
from .transport import PublishReport, Transport

__all__ = ["CorrectiveEvent", "build_event", "event_id", "message_key", "PublishReport", "Transport"]
