"""ListIndex, IPIndex and the ListRegistry built from config plus database values."""

from __future__ import annotations

import ipaddress
import logging
import time

import pytest

from appliance.config.schema import Config
from appliance.lists import IPIndex, Kind, ListIndex
from appliance.services import LIST_NAMES, ListRegistry, Services

ENTRIES = [
    "User@Example.com",
    "@dom.org",
    "other.net",
    "*.wild.com",
    "@*.at-wild.org",
    "*@*.sub.io",
    "info@*",
    "sales-??@shop.test",
    "/^ab+c@/",
    "/(?i)zz[0-9]+@/",
    r"/(x)\1@dup\.test/",
    "/(?P<n>q)@q\\.test/",
    "/[invalid/",
    "# a comment",
    "",
]


@pytest.fixture(scope="module")
def index() -> ListIndex:
    return ListIndex(ENTRIES, "test")


@pytest.mark.parametrize(
    ("address", "entry", "kind"),
    [
        ("user@example.com", "User@Example.com", Kind.ADDRESS),
        ("<USER@EXAMPLE.COM>", "User@Example.com", Kind.ADDRESS),
        ("anyone@dom.org", "@dom.org", Kind.DOMAIN),
        ("anyone@DOM.ORG.", "@dom.org", Kind.DOMAIN),
        ("y@other.net", "other.net", Kind.DOMAIN),
        ("a@b.wild.com", "*.wild.com", Kind.PATTERN),
        ("a@deep.b.wild.com", "*.wild.com", Kind.PATTERN),
        ("a@x.at-wild.org", "@*.at-wild.org", Kind.PATTERN),
        ("q@a.sub.io", "*@*.sub.io", Kind.PATTERN),
        ("info@anything.example", "info@*", Kind.PATTERN),
        ("sales-42@shop.test", "sales-??@shop.test", Kind.PATTERN),
        ("abbbc@x.y", "/^ab+c@/", Kind.PATTERN),
        ("ZZ12@q", "/(?i)zz[0-9]+@/", Kind.PATTERN),
        ("xx@dup.test", r"/(x)\1@dup\.test/", Kind.PATTERN),
        ("q@q.test", "/(?P<n>q)@q\\.test/", Kind.PATTERN),
    ],
)
def test_matches(index: ListIndex, address: str, entry: str, kind: Kind) -> None:
    found = index.lookup(address)
    assert found is not None and (found.entry, found.kind) == (entry, kind)
    assert index.match(address) == entry
    assert address in index


@pytest.mark.parametrize(
    "address",
    [
        "",
        "<>",
        "other@example.com",  # only user@ is listed
        "x@sub.dom.org",  # a domain means that domain exactly
        "x@wild.com",  # *.wild.com needs a subdomain
        "q@sub.io",
        "sales-4@shop.test",  # ? is exactly one character
        "xabc@x.y",
        "x@notother.net",
        "nobody@nowhere.example",
    ],
)
def test_non_matches(index: ListIndex, address: str) -> None:
    assert index.match(address) is None
    assert address not in index


def test_invalid_regex_is_skipped_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="postwall.lists"):
        index = ListIndex(["/[bad/", "/(unclosed/", "good@example.com"], "whitelist")
    assert index.entries == ("good@example.com",)
    assert "[bad" in caplog.text and "whitelist" in caplog.text
    assert index.match("good@example.com") == "good@example.com"


def test_duplicates_and_comments_are_dropped() -> None:
    index = ListIndex(["a@b.c", "a@b.c", "  a@b.c  ", "#x@y.z", ""])
    assert index.entries == ("a@b.c",)
    assert len(index) == 1 and bool(index)
    assert not ListIndex([])


def test_regex_with_alternation_and_anchors_stays_contained() -> None:
    index = ListIndex(["/^a@x$|^b@y$/", "*.z.test"])
    assert index.match("a@x") == "/^a@x$|^b@y$/"
    assert index.match("b@y") == "/^a@x$|^b@y$/"
    assert index.match("c@q.z.test") == "*.z.test"
    assert index.match("a@xx") is None


def test_verbose_flag_regex_with_trailing_comment() -> None:
    index = ListIndex(["/(?x) ^ spam \\d+ @  # numbered spammers/"])
    assert index.match("spam12@x.test") is not None
    assert index.match("ham@x.test") is None


def test_many_entries_lookup_is_fast() -> None:
    entries = [f"user{i}@example{i % 50}.com" for i in range(20_000)]
    entries += [f"*.w{i}.example" for i in range(2_000)]
    entries += [f"/^spam{i}-/" for i in range(500)]
    started = time.monotonic()
    index = ListIndex(entries, "big")
    build = time.monotonic() - started
    started = time.monotonic()
    for i in range(2_000):
        index.match(f"user{i}@example{i % 50}.com")
        index.match(f"x@a.w{i % 2000}.example")
        index.match(f"nobody{i}@nowhere.test")
    lookups = time.monotonic() - started
    assert index.match("x@a.w1999.example") == "*.w1999.example"
    assert index.match("spam499-x@a") == "/^spam499-/"
    assert build < 5.0 and lookups < 3.0


# --- IPIndex ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def networks() -> IPIndex:
    return IPIndex(
        ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.0/120",
         "not a network", "# comment", "0.0.0.0/0 junk"],
        "ip",
    )


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("10.1.2.3", "10.1.0.0/16"),  # the most specific network wins
        ("10.2.3.4", "10.0.0.0/8"),
        ("192.0.2.7", "192.0.2.7/32"),
        ("::ffff:10.1.1.1", "10.1.0.0/16"),  # IPv4-mapped IPv6 is IPv4
        ("198.51.100.9", "198.51.100.0/24"),  # a mapped entry becomes IPv4 too
        ("2001:db8:1::5", "2001:db8::/32"),
        ("8.8.8.8", None),
        ("2001:db9::1", None),
        ("garbage", None),
    ],
)
def test_ip_index(networks: IPIndex, address: str, network: str | None) -> None:
    found = networks.match(address)
    assert (str(found) if found is not None else None) == network


def test_ip_index_accepts_address_objects(networks: IPIndex) -> None:
    assert networks.match(ipaddress.ip_address("10.9.9.9")) == ipaddress.ip_network("10.0.0.0/8")
    assert ipaddress.ip_address("8.8.8.8") not in networks
    assert len(networks) == 5


def test_ip_index_default_route() -> None:
    index = IPIndex(["0.0.0.0/0", "::/0"])
    assert str(index.match("203.0.113.1")) == "0.0.0.0/0"
    assert str(index.match("2001:db8::1")) == "::/0"


# --- ListRegistry ----------------------------------------------------------------------


def test_registry_from_config_and_database() -> None:
    config = Config()
    config.filters.address_lists.whitelist = ["friend@example.org"]
    config.filters.ip_lists.deny = ["192.0.2.0/24"]
    registry = ListRegistry(config, {"whitelist": ["@partner.test"], "ip_allow": ["10.0.0.1"],
                                     "autowhitelist": ["pen.pal@far.test"]})
    assert registry.whitelist.match("friend@example.org") == "friend@example.org"
    assert registry.whitelist.match("x@partner.test") == "@partner.test"
    assert registry.autowhitelist.match("pen.pal@far.test") == "pen.pal@far.test"
    assert registry.ip_deny.match("192.0.2.9") is not None
    assert registry.ip_allow.match("10.0.0.1") is not None
    assert registry.get("whitelist") is registry.whitelist
    assert registry.ip("ip_deny") is registry.ip_deny
    assert set(registry.sizes()) == set(LIST_NAMES)


def test_registry_rebuild_swaps_everything(caplog: pytest.LogCaptureFixture) -> None:
    config = Config()
    registry = ListRegistry(config, {"blacklist": ["bad@spam.test"]})
    old = registry.blacklist
    with caplog.at_level(logging.WARNING, logger="postwall.services"):
        registry.rebuild(config, {"blacklist": ["worse@spam.test"], "no_such_list": ["x"]})
    assert old.match("bad@spam.test") is not None  # a reader holding the old index is safe
    assert registry.blacklist.match("bad@spam.test") is None
    assert registry.blacklist.match("worse@spam.test") is not None
    assert "no_such_list" in caplog.text


def test_empty_services() -> None:
    services = Services()
    assert services.lists.whitelist.match("a@b.c") is None
    assert services.lists.ip_allow.match("127.0.0.1") is None
    assert Services.from_config(Config()).lists.sizes()["whitelist"] == 0
