"""Per-phase breakdown of one workflow from its history: every event's time, with what it names.

Generic over event types, so it keeps working when the workflows' events change: any attributes that
carry an activity type, a marker, a signal, a timer or a child workflow are labelled with it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client


@dataclass
class Step:
    offset_ms: float
    """From WorkflowExecutionStarted."""
    delta_ms: float
    """From the previous step."""
    event: str
    detail: str


def _event_name(event: HistoryEvent) -> str:
    name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
    return "".join(word.capitalize() for word in name.split("_"))


def _attributes(event: HistoryEvent) -> Any:
    which = event.WhichOneof("attributes")
    return getattr(event, which) if which else None


def _get(message: Any, name: str) -> Any:
    """The field ``name`` of a message if it has one and it is set, else None."""
    if message is None or name not in message.DESCRIPTOR.fields_by_name:
        return None
    try:
        if not message.HasField(name):
            return None
    except ValueError:
        pass  # a repeated or scalar field has no presence: its value tells
    return getattr(message, name) or None


def _duration(value: Any) -> str:
    seconds = value.ToTimedelta().total_seconds() if value is not None else 0.0
    return f"{seconds:g} s"


def _marker(attributes: Any) -> str:
    """A local activity is recorded as a marker whose details name the activity type (as JSON)."""
    name = attributes.marker_name
    for payloads in attributes.details.values():
        for payload in payloads.payloads:
            try:
                data = json.loads(payload.data)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("activity_type"):
                return f"local activity {data['activity_type']} ({name})"
    return f"{'local activity ' if 'local_activity' in name else ''}marker {name}".strip()


def _detail(attributes: Any, earlier: dict[int, Any]) -> str:
    if attributes is None:
        return ""
    if _get(attributes, "marker_name"):
        return _marker(attributes)
    for field, label in (("activity_type", "activity"), ("workflow_type", "workflow")):
        named = _get(attributes, field)
        if named is not None:
            return f"{label} {named.name}"
    if _get(attributes, "signal_name"):
        return f"signal {attributes.signal_name}"
    if _get(attributes, "start_to_fire_timeout") is not None:
        return f"timer {_duration(attributes.start_to_fire_timeout)}"
    # Started, completed, fired, ... events refer to the event that scheduled or started them.
    for field in ("scheduled_event_id", "started_event_id", "initiated_event_id"):
        ref = _get(attributes, field)
        if ref and ref in earlier:
            return _detail(earlier[ref], earlier)
    return ""


def _seconds(event: HistoryEvent) -> float:
    return event.event_time.ToMicroseconds() / 1e6


async def breakdown(client: Client, workflow_id: str, marks: dict[str, float]) -> list[Step]:
    """The workflow's events and ``marks`` (label -> time.time() seen elsewhere), in time order."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    events = list(history.events)
    origin = _seconds(events[0])
    earlier: dict[int, Any] = {}
    rows: list[tuple[float, str, str]] = []
    for event in events:
        attributes = _attributes(event)
        rows.append((_seconds(event) - origin, _event_name(event), _detail(attributes, earlier)))
        earlier[event.event_id] = attributes
    rows += [(at - origin, label, "time.time(), not an event") for label, at in marks.items()]
    # Stable: a mark at the same millisecond as an event comes after it.
    rows.sort(key=lambda row: row[0])
    steps, previous = [], rows[0][0]
    for offset, name, detail in rows:
        steps.append(Step(round(offset * 1000, 1), round((offset - previous) * 1000, 1), name, detail))
        previous = offset
    return steps


def render(title: str, steps: list[Step]) -> str:
    lines = [title, f"  {'offset ms':>10} {'delta ms':>9}  event"]
    for step in steps:
        detail = f"  [{step.detail}]" if step.detail else ""
        lines.append(f"  {step.offset_ms:>10.1f} {step.delta_ms:>9.1f}  {step.event}{detail}")
    return "\n".join(lines)


def as_json(steps: list[Step]) -> list[dict[str, Any]]:
    return [asdict(step) for step in steps]
