"""The relay's policy (pure): reservations per peer, per IP and in all; circuits per peer, per IP and
in all; expiry frees slots; every refusal is counted by reason."""

from __future__ import annotations

import pytest

from p2p.relay_limits import RelayLimits, RelayPolicy, needs_direct


def test_reservations_table():
    policy = RelayPolicy(RelayLimits(reservations=3, reservations_per_ip=2, reservation_ttl_s=10))
    steps = [  # (peer, ip, now, expected)
        ("a", "1.1.1.1", 0, None),
        ("a", "1.1.1.1", 1, None),  # a renewal, not a second reservation
        ("b", "1.1.1.1", 2, None),
        ("c", "1.1.1.1", 3, "reservations_per_ip"),
        ("c", "2.2.2.2", 4, None),
        ("d", "3.3.3.3", 5, "reservations"),
        ("d", "3.3.3.3", 11, None),  # a's reservation (renewed at 1) expired at 11
    ]
    for peer, ip, now, expected in steps:
        assert policy.admit_reservation(peer, ip, now) == expected, (peer, ip, now)
    assert set(policy.reservations) == {"b", "c", "d"}
    assert policy.refused == {"reservations_per_ip": 1, "reservations": 1}


def test_circuits_table():
    policy = RelayPolicy(RelayLimits(circuits=4, circuits_per_peer=2, circuits_per_ip=3))
    for peer in ("p", "q"):
        policy.admit_reservation(peer, "9.9.9.9", 0)
    assert policy.admit_circuit("x", "1.1.1.1", "nobody", 0) == (None, "no_reservation")
    one, _ = policy.admit_circuit("x", "1.1.1.1", "p", 0)
    two, _ = policy.admit_circuit("y", "1.1.1.1", "p", 0)
    assert one is not None and two is not None
    assert policy.admit_circuit("z", "2.2.2.2", "p", 0) == (None, "circuits_per_peer")  # p is in two
    three, _ = policy.admit_circuit("z", "1.1.1.1", "q", 0)
    assert three is not None
    assert policy.admit_circuit("w", "1.1.1.1", "q", 0) == (None, "circuits_per_ip")
    four, _ = policy.admit_circuit("w", "2.2.2.2", "q", 0)
    assert four is not None
    assert policy.admit_circuit("v", "3.3.3.3", "q", 0) == (None, "circuits")
    policy.end_circuit(one)
    assert policy.admit_circuit("v", "3.3.3.3", "p", 0)[0] is not None


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_limits_are_whole_numbers_of_at_least_one(bad):
    with pytest.raises(ValueError, match="circuits"):
        RelayLimits(circuits=bad)


@pytest.mark.parametrize(("bulk", "allows", "refused"), [
    (0, 256 * 1024, False),  # a negotiation and a control stream fit
    (192 * 1024, 256 * 1024, False),  # exactly: bulk + the 64 KiB reserve
    (192 * 1024 + 1, 256 * 1024, True),
    (10**9, 0, False),  # a relay that states no limit
])
def test_a_job_needs_a_direct_connection_when_its_bulk_does_not_fit_the_relay(bulk, allows, refused):
    reason = needs_direct(bulk, allows)
    assert (reason is not None) is refused
    if refused:
        assert reason.startswith("needs a direct connection: hole punching failed, relay allows 256 KiB")
