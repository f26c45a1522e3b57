"""The durable queue (responder.queue) and the one backoff policy (responder.backoff)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from responder import Backoff, DurableQueue, QueueCounts
from responder.store import Store
from tests.conftest import Clock

NO_JITTER = Backoff(initial=10.0, maximum=80.0, jitter=0.0)


@pytest.fixture
def store(tmp_path: Path, clock: Clock):
    store = Store(tmp_path / "responder.db", clock=clock)
    yield store
    store.close()


def make_queue(store: Store, clock: Clock, **kwargs) -> DurableQueue:
    return DurableQueue(store, "jobs", kwargs.pop("backoff", NO_JITTER), clock, **kwargs)


# -- backoff -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 10.0), (1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 80.0), (500, 80.0)],
)
def test_backoff_doubles_from_initial_up_to_maximum(attempt: int, expected: float) -> None:
    assert NO_JITTER.delay(attempt) == expected


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 40.0), (0.5, 30.0), (0.999999, 20.0)])
def test_backoff_jitter_takes_off_at_most_its_share(draw: float, expected: float) -> None:
    backoff = Backoff(initial=10.0, maximum=80.0, jitter=0.5, random=lambda: draw)
    assert backoff.delay(3) == pytest.approx(expected, abs=1e-4)


def test_backoff_maximum_wins_over_initial() -> None:
    assert Backoff(initial=10.0, maximum=3.0, jitter=0.0).delay(1) == 3.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": -1, "maximum": 1}, "initial"),
        ({"initial": 1, "maximum": -1}, "maximum"),
        ({"initial": 1, "maximum": 2, "jitter": 1.5}, "jitter"),
    ],
)
def test_backoff_refuses_impossible_settings(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"Backoff.{field}"):
        Backoff(**kwargs)


# -- the queue -----------------------------------------------------------------------------


def test_enqueued_item_is_claimed_with_its_payload_and_an_attempt_counted(store, clock) -> None:
    queue = make_queue(store, clock)
    queue.enqueue({"to": "13800138000", "n": [1, 2]})
    [item] = queue.claim(5)
    assert (item.payload, item.state, item.attempts) == (
        {"to": "13800138000", "n": [1, 2]},
        "claimed",
        1,
    )
    assert queue.counts() == QueueCounts(claimed=1)
    assert queue.claim(5) == []  # a claimed item is not handed out twice


def test_enqueue_is_idempotent_on_its_key(store, clock) -> None:
    queue = make_queue(store, clock)
    first = queue.enqueue({"n": 1}, key="delivery-7")
    again = queue.enqueue({"n": 2}, key="delivery-7")
    assert again.id == first.id and again.payload == {"n": 1}
    assert queue.counts() == QueueCounts(pending=1)


def test_the_same_key_in_another_queue_is_another_item(store, clock) -> None:
    make_queue(store, clock).enqueue(1, key="k")
    DurableQueue(store, "other", NO_JITTER, clock).enqueue(2, key="k")
    assert make_queue(store, clock).counts() == QueueCounts(pending=1)


def test_item_due_later_is_not_claimed_before_its_time(store, clock) -> None:
    queue = make_queue(store, clock)
    queue.enqueue("later", at=clock() + 30)
    assert queue.claim() == []
    clock.advance(30)
    assert [i.payload for i in queue.claim()] == ["later"]


def test_items_are_claimed_in_the_order_they_fall_due(store, clock) -> None:
    queue = make_queue(store, clock)
    queue.enqueue("second", at=clock() + 2)
    queue.enqueue("first", at=clock() + 1)
    queue.enqueue("third", at=clock() + 3)
    clock.advance(5)
    assert [i.payload for i in queue.claim(3)] == ["first", "second", "third"]


def test_done_item_is_finished(store, clock) -> None:
    queue = make_queue(store, clock)
    queue.enqueue("x")
    [item] = queue.claim()
    done = queue.done(item)
    assert done.state == "done" and queue.get(item.id).state == "done"
    assert queue.counts() == QueueCounts(done=1)


def test_retry_waits_out_the_backoff_of_its_attempt(store, clock) -> None:
    queue = make_queue(store, clock)
    queue.enqueue("x")
    [item] = queue.claim()
    retried = queue.retry(item, "timed out")
    assert (retried.state, retried.next_attempt_at - clock()) == ("pending", 10.0)
    clock.advance(9)
    assert queue.claim() == []
    clock.advance(1)
    [again] = queue.claim()
    assert (again.attempts, again.last_error) == (2, "timed out")
    assert queue.retry(again, "timed out").next_attempt_at - clock() == 20.0


def test_retry_takes_a_given_delay_such_as_retry_after(store, clock) -> None:
    queue = make_queue(store, clock)
    queue.enqueue("x")
    [item] = queue.claim()
    assert queue.retry(item, "429", delay=3.0).next_attempt_at == clock() + 3.0


def test_last_attempt_retried_becomes_a_dead_letter(store, clock) -> None:
    queue = make_queue(store, clock, max_attempts=2)
    queue.enqueue("x")
    for _ in range(2):
        clock.advance(100)
        [item] = queue.claim()
        result = queue.retry(item, "refused")
    assert result.state == "dead"
    assert queue.get(item.id).last_error == "gave up after 2 attempts: refused"
    assert [i.id for i in queue.items("dead")] == [item.id]


def test_dead_marks_a_dead_letter_at_once(store, clock) -> None:
    queue = make_queue(store, clock)
    queue.enqueue("x")
    [item] = queue.claim()
    queue.dead(item, "cannot succeed")
    assert queue.counts() == QueueCounts(dead=1)


def test_requeue_dead_revives_dead_letters_with_attempts_reset(store, clock) -> None:
    queue = make_queue(store, clock)
    for payload in ("a", "b"):
        queue.enqueue(payload)
    for item in queue.claim(2):
        queue.dead(item, "no")
    assert queue.requeue_dead() == 2
    assert [(i.payload, i.attempts) for i in queue.claim(2)] == [("a", 1), ("b", 1)]


def test_release_puts_an_item_back_without_counting_the_attempt(store, clock) -> None:
    queue = make_queue(store, clock)
    queue.enqueue("x")
    [item] = queue.claim()
    queue.release(item)
    assert queue.claim()[0].attempts == 1


def test_recover_puts_back_what_a_dead_process_had_claimed(tmp_path, clock) -> None:
    first = Store(tmp_path / "q.db", clock=clock)
    make_queue(first, clock).enqueue("x")
    make_queue(first, clock).claim()
    first.close()  # the process died mid-work

    second = Store(tmp_path / "q.db", clock=clock)
    try:
        queue = make_queue(second, clock)
        assert queue.recover() == 1
        [item] = queue.claim()
        assert (item.payload, item.attempts) == ("x", 2)
    finally:
        second.close()


def test_recover_dead_letters_an_item_that_was_on_its_last_attempt(store, clock) -> None:
    queue = make_queue(store, clock, max_attempts=1)
    queue.enqueue("poison")
    queue.claim()
    assert queue.recover() == 1
    assert queue.counts() == QueueCounts(dead=1)


def test_payload_that_is_not_json_is_refused_clearly(store, clock) -> None:
    with pytest.raises(TypeError, match=r"queue 'jobs'.*JSON"):
        make_queue(store, clock).enqueue({"when": object()})


def test_enqueue_wakes_the_worker(store, clock) -> None:
    woken = []
    queue = make_queue(store, clock, on_enqueue=lambda: woken.append(1))
    queue.enqueue("x", key="k")
    queue.enqueue("x", key="k")  # already there: nothing new to wake for
    assert woken == [1]


def test_each_item_is_claimed_once_by_competing_threads(store, clock) -> None:
    queue = make_queue(store, clock)
    for n in range(60):
        queue.enqueue(n)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        while items := queue.claim(3):
            with lock:
                claimed.extend(i.payload for i in items)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(60))


def test_done_items_are_pruned_dead_letters_kept(store, clock) -> None:
    queue = make_queue(store, clock)
    for payload in ("done", "dead"):
        queue.enqueue(payload)
    done, dead = queue.claim(2)
    queue.done(done)
    queue.dead(dead, "no")
    clock.advance(10)
    assert store.queue_prune(clock()) == 1
    assert queue.counts() == QueueCounts(dead=1)
