"""Port choice for the servers the library starts (embedded.free_ports)."""

from __future__ import annotations

from vocalborn_tasks.embedded import _ephemeral_low, free_port, free_ports, port_in_use


def test_ports_drawn_together_are_distinct_free_and_below_the_ephemeral_range() -> None:
    # 300 draws from ~12,700 ports: drawn one by one, a repeat is near certain (birthday
    # bound ~97 %), so this fails if the ports are not held until all are chosen.
    ports = free_ports(300)
    assert len(set(ports)) == 300
    low = _ephemeral_low()
    assert all(20000 <= p < low for p in ports) or low <= 21000
    assert not any(port_in_use(p) for p in ports[:20])


def test_one_port() -> None:
    port = free_port()
    assert 0 < port < 65536 and not port_in_use(port)
