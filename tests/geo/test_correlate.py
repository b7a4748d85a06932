"""geo.correlate: address -> the names whose DNS answers held it, bounded in age and size."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from geo.correlate import MAX_NAMES_PER_ADDRESS, DnsCorrelator


def test_newest_name_wins() -> None:
    c = DnsCorrelator()
    c.learn("api.openai.com", ["162.159.140.245"], 10.0)
    c.learn("chatgpt.com", ["162.159.140.245"], 20.0)
    assert c.name_for("162.159.140.245", 21.0) == "chatgpt.com"
    assert c.names_for("162.159.140.245", 21.0) == ["chatgpt.com", "api.openai.com"]
    # The same name answered again moves to the front.
    c.learn("api.openai.com", ["162.159.140.245"], 30.0)
    assert c.name_for("162.159.140.245", 31.0) == "api.openai.com"


def test_unknown_address() -> None:
    assert DnsCorrelator().name_for("192.0.2.1", 0.0) is None


def test_answers_go_stale() -> None:
    c = DnsCorrelator(max_age=60.0)
    c.learn("a.example", ["192.0.2.1"], 100.0)
    assert c.name_for("192.0.2.1", 160.0) == "a.example"
    assert c.name_for("192.0.2.1", 160.5) is None


def test_bounded_by_entries_least_recently_answered_first() -> None:
    c = DnsCorrelator(max_entries=3)
    for i in range(5):
        c.learn(f"n{i}.example", [f"192.0.2.{i}"], float(i))
    assert len(c) == 3
    assert c.evicted == 2
    assert c.name_for("192.0.2.0", 5.0) is None
    assert c.name_for("192.0.2.4", 5.0) == "n4.example"


def test_bounded_names_per_address() -> None:
    c = DnsCorrelator()
    for i in range(10):
        c.learn(f"n{i}.example", ["192.0.2.9"], float(i))
    names = c.names_for("192.0.2.9", 10.0)
    assert len(names) == MAX_NAMES_PER_ADDRESS
    assert names[0] == "n9.example"


@given(
    st.lists(
        st.tuples(st.text(max_size=20), st.lists(st.text(max_size=8), max_size=4)), max_size=200
    )
)
def test_never_grows_past_its_bounds(answers: list[tuple[str, list[str]]]) -> None:
    c = DnsCorrelator(max_entries=16)
    for ts, (name, addresses) in enumerate(answers):
        c.learn(name, addresses, float(ts))
    assert len(c) <= 16
