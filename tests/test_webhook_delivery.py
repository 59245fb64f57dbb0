"""Webhook delivery (server.py, section 4): once per event id, one room at a time, on disk,
then the handler.

Dedupe by event id, the handler's failure and LiveKit's retry, one event per
room at a time (rooms share 64 locks), and the event file. The app is called
directly under wsgiref's validator, on an injected clock that the tests step:
nothing here sleeps. How /webhook verifies a request is tested in test_app.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from helpers import (
    Clock,
    app_for,
    call,
    dedupe_app,
    deliver,
    error,
    event,
    record,
    signed,
)
from server import WebhookDelivery


# --------------------------------------------------------------------------
# Dedupe by event id, and a handler that fails


def test_same_event_id_twice_is_taken_once():
    events: list = []
    app = dedupe_app(Clock(), events)
    assert deliver(app, event("EV_1")).status == 200
    assert deliver(app, event("EV_1")).status == 200
    assert deliver(app, event("EV_1"), path="/livekit/webhook").status == 200
    assert deliver(app, event("EV_2")).status == 200
    assert [e["id"] for e in events] == ["EV_1", "EV_2"]


@pytest.mark.parametrize(
    "later,taken_again",
    [(0, False), (1, False), (9.5, False), (10, True), (11, True), (3600, True)],
    ids=["same-second", "1s", "9.5s", "at-the-window", "past-it", "an-hour"],
)
def test_event_id_is_remembered_for_dedupe_seconds(later, taken_again):
    clock, events = Clock(), []
    app = dedupe_app(clock, events, dedupe_seconds=10)
    assert deliver(app, event("EV_1")).status == 200
    clock.step(later)
    assert deliver(app, event("EV_1")).status == 200
    assert len(events) == (2 if taken_again else 1)


def test_event_taken_again_after_the_window_is_remembered_again():
    clock, events = Clock(), []
    app = dedupe_app(clock, events, dedupe_seconds=10)
    deliver(app, event("EV_1"))
    clock.step(10)
    deliver(app, event("EV_1"))
    clock.step(5)
    deliver(app, event("EV_1"))
    assert len(events) == 2


@pytest.mark.parametrize("event_id", [None, ""], ids=["no-id", "empty-id"])
def test_event_without_an_id_is_never_deduped(event_id):
    events: list = []
    app = dedupe_app(Clock(), events)
    for _ in range(3):
        assert deliver(app, event(event_id)).status == 200
    assert len(events) == 3


def test_dedupe_window_zero_never_dedupes():
    events: list = []
    app = dedupe_app(Clock(), events, dedupe_seconds=0)
    for _ in range(3):
        assert deliver(app, event("EV_1")).status == 200
    assert len(events) == 3


def test_past_max_ids_the_oldest_event_id_is_forgotten_first(monkeypatch):
    monkeypatch.setattr(WebhookDelivery, "MAX_IDS", 2)
    events: list = []
    app = dedupe_app(Clock(), events)
    for event_id in ("EV_1", "EV_2", "EV_3", "EV_1", "EV_3"):
        assert deliver(app, event(event_id)).status == 200
    # EV_1 was forgotten to make room for EV_3, so its repeat is taken again; EV_3's is not.
    assert [e["id"] for e in events] == ["EV_1", "EV_2", "EV_3", "EV_1"]
    assert list(app.delivery.taken) == ["EV_3", "EV_1"]


def test_failed_handler_is_500_and_the_retry_is_taken():
    calls: list = []

    def on_event(value):
        calls.append(value.id)
        if len(calls) == 1:
            raise RuntimeError("database is down: secret-ish detail")

    app = app_for(clock=Clock(), on_event=on_event)
    response = deliver(app, event("EV_1"))
    assert (response.status, response.json()) == (500, error("Webhook handler failed"))
    assert b"database" not in response.body
    assert deliver(app, event("EV_1")).status == 200
    assert deliver(app, event("EV_1")).status == 200
    assert calls == ["EV_1", "EV_1"]


# --------------------------------------------------------------------------
# One room at a time


class CountingLock:
    """A room lock that counts the threads holding it or waiting for it, and announces each change."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition()
        self.users = 0  # guarded by `changed`

    def _count(self, step: int) -> None:
        with self.changed:
            self.users += step
            self.changed.notify_all()

    def __enter__(self):
        self._count(+1)
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()
        self._count(-1)

    def wait_for_users(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.users == count, timeout=2), (
                self.users,
                count,
            )


def in_thread(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def blocking_app(order: list, gate_id: str):
    """An app whose handler blocks on the event `gate_id` until `release` is set; its room locks count users."""
    entered, release = threading.Event(), threading.Event()

    def on_event(value):
        order.append(("start", value.id))
        if value.id == gate_id:
            entered.set()
            assert release.wait(2)
        order.append(("end", value.id))

    app = app_for(clock=Clock(), on_event=on_event)
    assert len(app.delivery.room_locks) == WebhookDelivery.ROOM_LOCKS == 64
    app.delivery.room_locks = [CountingLock() for _ in range(WebhookDelivery.ROOM_LOCKS)]
    return app, entered, release


def lock_of(app, room: str) -> CountingLock:
    """The lock a room's events are taken under: one of ROOM_LOCKS, by the hash of its name."""
    return app.delivery.room_locks[hash(room) % WebhookDelivery.ROOM_LOCKS]


def a_room(same_lock_as: str = None, other_lock_than: tuple = ()) -> str:
    """A room name on the lock of `same_lock_as`, or on none of the locks of `other_lock_than`."""

    # str hashes change from run to run (PYTHONHASHSEED): the rooms are picked in this process.
    def index(room):
        return hash(room) % WebhookDelivery.ROOM_LOCKS

    for n in range(2, 100_000):
        room = f"room-{n}"
        if room == same_lock_as:
            continue
        if same_lock_as is not None and index(room) == index(same_lock_as):
            return room
        if same_lock_as is None and index(room) not in {index(other) for other in other_lock_than}:
            return room
    raise AssertionError("no such room name")


def test_events_for_one_room_are_taken_one_at_a_time_in_order():
    order: list = []
    app, entered, release = blocking_app(order, "EV_1")
    responses: dict = {}
    first = in_thread(lambda: responses.update(first=deliver(app, event("EV_1", room="room-1"))))
    assert entered.wait(2)
    second = in_thread(lambda: responses.update(second=deliver(app, event("EV_2", room="room-1"))))
    lock_of(app, "room-1").wait_for_users(2)  # the second is queued on the room's lock
    assert order == [("start", "EV_1")]
    release.set()
    first.join(2)
    second.join(2)
    assert not first.is_alive() and not second.is_alive()
    assert order == [("start", "EV_1"), ("end", "EV_1"), ("start", "EV_2"), ("end", "EV_2")]
    assert [responses[name].status for name in ("first", "second")] == [200, 200]
    assert all(lock.users == 0 and not lock.lock.locked() for lock in app.delivery.room_locks)


def test_a_repeat_waiting_behind_its_first_delivery_is_not_taken_again():
    order: list = []
    app, entered, release = blocking_app(order, "EV_1")
    responses: list = []
    first = in_thread(lambda: responses.append(deliver(app, event("EV_1"))))
    assert entered.wait(2)
    second = in_thread(lambda: responses.append(deliver(app, event("EV_1"))))
    lock_of(app, "room-1").wait_for_users(2)
    release.set()
    first.join(2)
    second.join(2)
    assert [response.status for response in responses] == [200, 200]
    assert order == [("start", "EV_1"), ("end", "EV_1")]


def test_events_for_rooms_on_different_locks_are_taken_at_the_same_time():
    order: list = []
    app, entered, release = blocking_app(order, "EV_1")
    other = a_room(other_lock_than=("room-1",))
    first = in_thread(deliver, app, event("EV_1", room="room-1"))
    assert entered.wait(2)
    second = in_thread(deliver, app, event("EV_2", room=other))
    second.join(2)
    assert not second.is_alive()  # done while room-1's handler still blocks
    assert order == [("start", "EV_1"), ("start", "EV_2"), ("end", "EV_2")]
    release.set()
    first.join(2)
    assert order[-1] == ("end", "EV_1")


def test_rooms_that_share_a_lock_are_taken_one_at_a_time():
    # The price of a fixed number of locks: now and then, two rooms wait for each other.
    order: list = []
    app, entered, release = blocking_app(order, "EV_1")
    twin = a_room(same_lock_as="room-1")
    first = in_thread(deliver, app, event("EV_1", room="room-1"))
    assert entered.wait(2)
    second = in_thread(deliver, app, event("EV_2", room=twin))
    lock_of(app, "room-1").wait_for_users(2)
    assert order == [("start", "EV_1")]
    release.set()
    first.join(2)
    second.join(2)
    assert order == [("start", "EV_1"), ("end", "EV_1"), ("start", "EV_2"), ("end", "EV_2")]


def test_room_locks_stay_a_fixed_list_whatever_the_rooms():
    app = app_for(clock=Clock())
    locks = app.delivery.room_locks
    assert len(locks) == WebhookDelivery.ROOM_LOCKS == 64
    assert len({id(lock) for lock in locks}) == 64
    for n in range(200):
        assert deliver(app, event(f"EV_{n}", room=f"room-{n}")).status == 200
    assert app.delivery.room_locks is locks and len(locks) == 64
    assert not any(lock.locked() for lock in locks)


@pytest.mark.parametrize(
    "value",
    [
        lambda room, other: {"event": "egress_started", "egressInfo": {"roomName": room}},
        lambda room, other: {"event": "ingress_started", "ingressInfo": {"roomName": room}},
        lambda room, other: {
            "event": "track_published",
            "room": {"name": room},
            "egressInfo": {"roomName": other},
        },
    ],
    ids=["egress", "ingress", "room-first"],
)
def test_events_without_a_room_object_are_ordered_by_the_room_they_name(value):
    order: list = []
    app, entered, release = blocking_app(order, "EV_1")
    # On a lock of its own: a delivery that read "" or the other room would not queue behind the first.
    room = a_room(other_lock_than=("",))
    other = a_room(other_lock_than=("", room))
    first = in_thread(deliver, app, event("EV_1", room=room))
    assert entered.wait(2)
    second = in_thread(deliver, app, {**value(room, other), "id": "EV_2"})
    lock_of(app, room).wait_for_users(2)
    assert order == [("start", "EV_1")]
    release.set()
    first.join(2)
    second.join(2)
    assert order[2:] == [("start", "EV_2"), ("end", "EV_2")]


# --------------------------------------------------------------------------
# The event file


def read_lines(path: Path) -> list:
    text = path.read_bytes()
    assert text.endswith(b"\n")
    return [json.loads(line) for line in text.splitlines()]


def test_event_file_holds_each_accepted_event_once_in_order(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"earlier":"line"}\n')
    events: list = []
    app = app_for(clock=Clock(), on_event=record(events), event_file=str(path))
    sent = [
        event("EV_1"),
        event("EV_2", room="room-2"),
        event("EV_1"),
        event(None),
        event("EV_3", kind="room_finished"),
    ]
    for value in sent:
        assert deliver(app, value).status == 200
    expected = [
        event("EV_1"),
        event("EV_2", room="room-2"),
        event(None),
        event("EV_3", kind="room_finished"),
    ]
    assert read_lines(path) == [{"earlier": "line"}] + expected
    assert events == expected


def test_event_is_in_the_file_before_the_handler_runs(tmp_path):
    path = tmp_path / "events.jsonl"
    seen_in_file: list = []
    app = app_for(
        clock=Clock(),
        on_event=lambda value: seen_in_file.append(read_lines(path)),
        event_file=str(path),
    )
    deliver(app, event("EV_1"))
    assert seen_in_file == [[event("EV_1")]]


def test_event_file_line_escapes_non_ascii_and_line_breaks(tmp_path):
    path = tmp_path / "events.jsonl"
    app = app_for(clock=Clock(), event_file=str(path))
    value = event("EV_1", room="Zoë\n\u2028李")
    assert deliver(app, value).status == 200
    assert path.read_bytes().count(b"\n") == 1
    assert read_lines(path) == [value]


def test_handler_failure_leaves_the_event_in_the_file_once_per_attempt(tmp_path):
    # Documented as at-least-once: a consumer of the file deduplicates by id.
    path = tmp_path / "events.jsonl"
    failures = [RuntimeError("once")]

    def on_event(value):
        if failures:
            raise failures.pop()

    app = app_for(clock=Clock(), on_event=on_event, event_file=str(path))
    assert deliver(app, event("EV_1")).status == 500
    assert deliver(app, event("EV_1")).status == 200
    assert deliver(app, event("EV_1")).status == 200
    assert read_lines(path) == [event("EV_1"), event("EV_1")]


def test_unwritable_event_file_is_503_and_the_handler_is_not_called(tmp_path):
    events: list = []
    app = app_for(clock=Clock(), on_event=record(events), event_file=str(tmp_path))  # a directory
    response = deliver(app, event("EV_1"))
    assert (response.status, response.json()) == (503, error("Could not store the event"))
    assert events == []


def test_event_file_failure_is_not_remembered_as_delivered(tmp_path):
    path = tmp_path / "later" / "events.jsonl"
    events: list = []
    app = app_for(clock=Clock(), on_event=record(events), event_file=str(path))
    assert deliver(app, event("EV_1")).status == 503
    path.parent.mkdir()
    assert deliver(app, event("EV_1")).status == 200
    assert deliver(app, event("EV_1")).status == 200
    assert events == [event("EV_1")]
    assert read_lines(path) == [event("EV_1")]


def signed_webhook(app, body: bytes):
    """POST `body` to /webhook, signed as LiveKit signs it, at the app's clock (FIXED_NOW)."""
    return call(app, "POST", "/webhook", body, headers={"Authorization": signed(body)})


def test_a_torn_last_line_in_the_event_file_does_not_swallow_the_next_event(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event":"room_started","id":"EV_0","room":{"na')  # a crash mid-write
    app = app_for(event_file=str(path))
    assert signed_webhook(app, b'{"event":"room_finished","id":"EV_1"}').status == 200
    assert path.read_bytes().splitlines()[-1] == b'{"event":"room_finished","id":"EV_1"}'
