"""Arbitrary and mutated datagrams into DTLS connections at every stage: no exception
escapes (the rules would allow rtp.errors subclasses; we allow none), and problems end
as counted drops or a ConnectionFailed event."""

from __future__ import annotations

import pytest
from budgets import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtls_helpers import make_certificate

from rtp.dtls import DtlsConnection, DtlsRole, DtlsState

SETTINGS = settings(max_examples=examples(2), deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLIENT_CERT = make_certificate()
SERVER_CERT = make_certificate()

# Datagrams that look like DTLS often enough to get past the first checks.
record_like = st.builds(
    lambda ct, ver, epoch, seq, body, extra: bytes((ct,)) + ver + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
    + len(body).to_bytes(2, "big") + body + extra,
    st.sampled_from([20, 21, 22, 23, 24]),
    st.sampled_from([b"\xfe\xfd", b"\xfe\xff", b"\x03\x03"]),
    st.integers(0, 2),
    st.integers(0, 10),
    st.binary(max_size=200),
    st.binary(max_size=20),
)
datagrams = st.lists(st.one_of(st.binary(max_size=300), record_like), max_size=8)
mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)


def new_client() -> DtlsConnection:
    return DtlsConnection(DtlsRole.CLIENT, CLIENT_CERT, [("sha-256", SERVER_CERT.fingerprint())])


def new_server(cookie: bool = False) -> DtlsConnection:
    return DtlsConnection(
        DtlsRole.SERVER, SERVER_CERT, [("sha-256", CLIENT_CERT.fingerprint())], cookie_secret=b"z" * 32 if cookie else None
    )


def feed(conn: DtlsConnection, data: list[bytes]) -> None:
    now = 0.0
    for datagram in data:
        now += 0.5
        # The rules allow rtp.errors subclasses to escape; ours catches everything itself,
        # so any exception at all fails the test.
        conn.receive_datagram(datagram, now)
        conn.handle_timer(now)
        conn.datagrams_to_send(now)
        conn.get_timer()
        while conn.next_event() is not None:
            pass


def mutate(datagram: bytes, patches: list[tuple[int, int]], truncate: int | None) -> bytes:
    data = bytearray(datagram)
    for position, value in patches:
        if data:
            data[position % len(data)] = value
    return bytes(data[:truncate] if truncate is not None else data)


@pytest.mark.parametrize("target", ["server", "server-with-cookie", "client"])
@SETTINGS
@given(data=datagrams)
def test_arbitrary_datagrams_into_fresh_connection(target, data):
    if target == "client":
        conn = new_client()
        conn.start(0.0)
    else:
        conn = new_server(cookie=target == "server-with-cookie")
    feed(conn, data)
    assert conn.state in set(DtlsState)


def _stage(stage: str):
    """A (victim, genuine next datagrams for it) pair partway through a real handshake."""
    client, server = new_client(), new_server()
    client.start(0.0)
    flight1 = client.datagrams_to_send(0.0)
    if stage == "server-before-hello":
        return server, flight1
    for d in flight1:
        server.receive_datagram(d, 0.0)
    flight4 = server.datagrams_to_send(0.0)
    if stage == "client-awaiting-server-flight":
        return client, flight4
    for d in flight4:
        client.receive_datagram(d, 0.0)
    flight5 = client.datagrams_to_send(0.0)
    if stage == "server-awaiting-client-flight":
        return server, flight5
    for d in flight5:
        server.receive_datagram(d, 0.0)
    flight6 = server.datagrams_to_send(0.0)
    if stage == "client-awaiting-finished":
        return client, flight6
    for d in flight6:
        client.receive_datagram(d, 0.0)
    client.send_application_data(b"data")
    return server, client.datagrams_to_send(0.0)


STAGES = [
    "server-before-hello",
    "client-awaiting-server-flight",
    "server-awaiting-client-flight",
    "client-awaiting-finished",
    "server-connected",
]


@pytest.mark.parametrize("stage", STAGES)
@SETTINGS
@given(patches=mutations, truncate=st.one_of(st.none(), st.integers(0, 1500)), which=st.integers(0, 10), junk=datagrams)
def test_mutated_handshake_datagrams_mid_handshake(stage, patches, truncate, which, junk):
    victim, genuine = _stage(stage)
    index = which % len(genuine)
    tampered = genuine[:index] + [mutate(genuine[index], patches, truncate)] + genuine[index + 1 :]
    feed(victim, tampered + junk + genuine)
    assert victim.state in set(DtlsState)
