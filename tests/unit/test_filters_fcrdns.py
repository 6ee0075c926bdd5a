"""The pure parts of the FCrDNS check: generic/dynamic host names."""

from __future__ import annotations

import ipaddress

import pytest

from appliance.config.schema import Config, FCrDNSSettings
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.filters.fcrdns import DynamicNames, FCrDNSFilter, FCrDNSPrefetch, embeds_ipv4
from appliance.filters.registry import settings_for
from appliance.services import Services
from appliance.verdict import Mode, Stage

IP = ipaddress.ip_address("198.51.100.23")


@pytest.mark.parametrize("name", [
    "198-51-100-23.dyn.isp.example",
    "23-100-51-198.pool.isp.example",
    "host.23.100.51.198.isp.example",
    "ec2-198-51-100-23.compute-1.cloud.example",
    "198051100023.cust.isp.example",
    "023100051198.isp.example",
    "ip198_51_100_23.isp.example",
])
def test_names_that_spell_the_address(name: str) -> None:
    assert embeds_ipv4(name, IP)


@pytest.mark.parametrize("name", [
    "mail.partner.example",
    "198-51-100-24.dyn.isp.example",  # another address
    "51-100-23.isp.example",  # three octets only
    "mail-198-51.partner.example",
    "1198-51-100-23.isp.example",  # 1198 is not an octet
    "mail-db8eur05on2023.outbound.example",
])
def test_names_that_do_not(name: str) -> None:
    assert not embeds_ipv4(name, IP)


def test_ipv6_is_never_embedded() -> None:
    assert not embeds_ipv4("2001-db8--1.isp.example", ipaddress.ip_address("2001:db8::1"))


DEFAULTS = DynamicNames(list(FCrDNSSettings().dynamic_patterns), embedded_ip=True)


@pytest.mark.parametrize("name", [
    "dyn.isp.example",
    "host.dynamic.isp.example",
    "dhcp-12.campus.example",
    "pool-71-2.isp.example",
    "adsl.isp.example",
    "ppp123.isp.example",
    "cpe-1-2.cable.example",
    "client-5-6.isp.example",
    "static-9-8-7.isp.example",
    "198-51-100-23.isp.example",
])
def test_default_patterns_find_generic_names(name: str) -> None:
    assert DEFAULTS.reason(name, IP) is not None


@pytest.mark.parametrize("name", [
    "mail.partner.example",
    "mx1.partner.example",
    "smtp-out-2.provider.example",
    "mail-wr1-f41.google.com",
    "a48-30.smtp-out.amazonses.com",
    "o1.ptr1234.sendgrid.net",
    "mail-db8eur05on2041.outbound.protection.outlook.com",
    "dynamo.example",  # 'dyn' only as a whole label part
    "pooled.example",
])
def test_default_patterns_spare_mail_servers(name: str) -> None:
    assert DEFAULTS.reason(name, IP) is None


def test_reason_names_the_match_and_embedded_ip_can_be_off() -> None:
    assert "dhcp" in (DEFAULTS.reason("dhcp7.isp.example", IP) or "")
    without = DynamicNames([], embedded_ip=False)
    assert without.reason("198-51-100-23.isp.example", IP) is None


def test_bad_pattern_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        FCrDNSSettings(dynamic_patterns=["(unclosed"])


async def test_off_by_default_and_needs_a_resolver() -> None:
    config = Config()
    assert config.filters.fcrdns.mode is Mode.OFF
    assert FCrDNSPrefetch.stage is Stage.CONNECT and FCrDNSFilter.stage is Stage.MAIL
    prefetch = FCrDNSPrefetch(settings_for(FCrDNSPrefetch, config), {}, config, Services())
    conn = ConnectionContext(IP, 1, Listener.INBOUND)
    assert (await prefetch.check(TransactionContext(connection=conn))).symbols == ()
    flt = FCrDNSFilter(settings_for(FCrDNSFilter, config), {}, config, Services())
    conn = ConnectionContext(IP, 1, Listener.INBOUND)
    with pytest.raises(RuntimeError, match="resolver"):
        await flt.check(TransactionContext(connection=conn))
    relay = ConnectionContext(IP, 1, Listener.RELAY)
    assert (await flt.check(TransactionContext(connection=relay))).symbols == ()
