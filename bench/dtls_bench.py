"""DTLS micro-benchmarks: full in-memory handshakes per second (our client + our server) and
1200-byte application-data records protected/unprotected per second.

Run: ``python -m bench.dtls_bench`` (not a test; numbers depend on the machine).
"""

from __future__ import annotations

import datetime
import statistics
import time

from rtp.dtls import CipherSuite, DtlsCertificate, DtlsConnection, DtlsRole, DtlsState
from rtp.dtls.cipher import make_record_ciphers

NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
PAYLOAD = bytes(1200)


def _pump(a: DtlsConnection, b: DtlsConnection) -> None:
    while True:
        moved = False
        for d in a.datagrams_to_send(0.0):
            b.receive_datagram(d, 0.0)
            moved = True
        for d in b.datagrams_to_send(0.0):
            a.receive_datagram(d, 0.0)
            moved = True
        if not moved:
            return


def _connected_pair(client_cert, server_cert, suite=CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, cookie=None):
    client = DtlsConnection(DtlsRole.CLIENT, client_cert, [("sha-256", server_cert.fingerprint())], cipher_suites=(suite,))
    server = DtlsConnection(
        DtlsRole.SERVER, server_cert, [("sha-256", client_cert.fingerprint())], cipher_suites=(suite,), cookie_secret=cookie
    )
    client.start(0.0)
    _pump(client, server)
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED
    return client, server


def _rate(fn, seconds: float = 1.0) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        count += 1
    return count / elapsed


def bench_handshakes(client_cert, server_cert, cookie) -> float:
    return _rate(lambda: _connected_pair(client_cert, server_cert, cookie=cookie), 2.0)


def bench_records(client_cert, server_cert, suite) -> tuple[float, float]:
    """(records/s through send_application_data + receive_datagram + next_event, raw seal+open/s)."""
    client, server = _connected_pair(client_cert, server_cert, suite)

    def through_connections():
        client.send_application_data(PAYLOAD)
        for d in client.datagrams_to_send(0.0):
            server.receive_datagram(d, 0.0)
        server.next_event()

    write, _ = make_record_ciphers(suite, bytes(100), True)
    _, read = make_record_ciphers(suite, bytes(100), False)
    seq = [0]

    def raw():
        seq[0] += 1
        read.open(23, 0xFEFD, 1, seq[0], write.seal(23, 0xFEFD, 1, seq[0], PAYLOAD))

    return _rate(through_connections), _rate(raw)


def main() -> None:
    client_cert, server_cert = DtlsCertificate.generate(NOT_BEFORE), DtlsCertificate.generate(NOT_BEFORE)
    print("DTLS 1.2 handshakes/s (our client + our server in one process, ECDHE x25519, mutual ECDSA P-256):")
    for label, cookie in (("no cookie", None), ("HelloVerifyRequest", b"k" * 32)):
        runs = [bench_handshakes(client_cert, server_cert, cookie) for _ in range(3)]
        print(f"  {label:20s} median {statistics.median(runs):7.1f}/s  runs {', '.join(f'{r:.1f}' for r in runs)}")
    print("1200-byte application-data records/s (protect + unprotect):")
    for suite in CipherSuite:
        results = [bench_records(client_cert, server_cert, suite) for _ in range(3)]
        conn = statistics.median(r[0] for r in results)
        raw = statistics.median(r[1] for r in results)
        print(f"  {suite.name:48s} via connections {conn / 1000:6.1f}k/s   cipher only {raw / 1000:6.1f}k/s")


if __name__ == "__main__":
    main()
