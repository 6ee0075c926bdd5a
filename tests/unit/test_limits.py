"""Connection limits shared across worker processes."""

from __future__ import annotations

from appliance.smtp.limits import ConnectionCounts, create_counts_file, reset_worker


def test_limits_count_across_workers_and_a_dead_worker_is_forgotten(tmp_path):
    path = tmp_path / "run" / "connections"
    create_counts_file(path, 2)
    first, second = ConnectionCounts(path, 0), ConnectionCounts(path, 1)
    assert first.try_open("192.0.2.1", 10, 2) is None
    assert second.try_open("192.0.2.1", 10, 2) is None
    assert first.try_open("192.0.2.1", 10, 2) == "max_connections_per_ip"
    assert second.try_open("192.0.2.2", 3, 5) is None
    assert first.try_open("192.0.2.3", 3, 5) == "max_connections"
    assert first.total() == 3 and first.for_ip("192.0.2.1") == 2
    reset_worker(path, 1)
    assert first.total() == 1 and first.for_ip("192.0.2.1") == 1
    first.close("192.0.2.1")
    first.close("192.0.2.1")  # closing more than opened never goes negative
    assert first.total() == 0


def test_private_counts_work_without_a_file():
    counts = ConnectionCounts()
    assert counts.try_open("192.0.2.1", 1, 1) is None
    assert counts.try_open("192.0.2.9", 1, 1) == "max_connections"
