"""Client addresses reduced to the block one sender controls.

An IPv6 host usually owns a whole /64 and can pick a new address in it for every
connection, so per-client state (penalty box, rate limits) is kept per /64; greylisting
groups clients further (a /24 by default), because large senders retry from another
address of the same pool.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CLIENT_PREFIX_V4 = 32
CLIENT_PREFIX_V6 = 64


def as_ip(value: str | IPAddress) -> IPAddress:
    """`value` as an address; an IPv4-mapped IPv6 address counts as the IPv4 one."""
    ip = value if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address) else (
        ipaddress.ip_address(str(value).strip().split("%", 1)[0])
    )
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def netblock(ip: str | IPAddress, v4_prefix: int, v6_prefix: int) -> str:
    """The network of `ip` with the prefix for its family, as text: ``192.0.2.0/24``,
    ``2001:db8:1:2::/64``; a full-length prefix gives the bare address (``192.0.2.7``)."""
    address = as_ip(ip)
    bits = address.max_prefixlen
    prefix = v4_prefix if bits == 32 else v6_prefix
    if prefix == bits:
        return str(address)
    # Masking the integer is several times cheaper than parsing a network from text.
    masked = int(address) & (((1 << prefix) - 1) << (bits - prefix))
    return f"{type(address)(masked)}/{prefix}"


def client_key(ip: str | IPAddress) -> str:
    """The key of per-client state: the IPv4 address, or the IPv6 /64."""
    return netblock(ip, CLIENT_PREFIX_V4, CLIENT_PREFIX_V6)


def parse_client(text: str) -> str:
    """A client key from what an operator typed: an address, or an IPv6 ``.../64``.

    ValueError names what is wrong (the CLI shows it as it is)."""
    value = text.strip()
    try:
        if "/" in value:
            network = ipaddress.ip_network(value, strict=False)
            expected = CLIENT_PREFIX_V4 if network.version == 4 else CLIENT_PREFIX_V6
            if network.prefixlen != expected:
                raise ValueError(f"expected an address or an IPv6 /64, got /{network.prefixlen}")
            return client_key(network.network_address)
        return client_key(value)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a client address: {exc}") from None
