"""Shared pieces of the DTLS tests: certificates, a pyOpenSSL peer in memory-BIO mode, pumps."""

from __future__ import annotations

import datetime

from OpenSSL import SSL

from rtp.dtls import DtlsCertificate, DtlsConnection, DtlsRole

NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

OPENSSL_SRTP_NAMES = {
    "AES128_CM_HMAC_SHA1_80": b"SRTP_AES128_CM_SHA1_80",
    "AEAD_AES_128_GCM": b"SRTP_AEAD_AES_128_GCM",
}


def make_certificate() -> DtlsCertificate:
    return DtlsCertificate.generate(NOT_BEFORE)


class OpenSslPeer:
    """pyOpenSSL DTLS over memory BIOs, verifying nothing itself (we check fingerprints on our side;
    the test checks the certificate it saw)."""

    def __init__(
        self,
        server: bool,
        certificate: DtlsCertificate,
        srtp: bytes = b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80",
        ciphers: bytes = b"ECDHE-ECDSA-AES128-GCM-SHA256",
        curve=None,
        mtu: int = 1200,
        cookie: bytes | None = None,
    ) -> None:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.use_certificate(certificate.certificate)
        ctx.use_privatekey(certificate.private_key)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        ctx.set_tlsext_use_srtp(srtp)
        ctx.set_cipher_list(ciphers)
        ctx.set_options(SSL.OP_NO_QUERY_MTU)  # session tickets stay on: OpenSSL offers them, we decline
        if curve is not None:
            ctx.set_tmp_ecdh(curve)
        if cookie is not None:
            # OpenSSL then answers the first ClientHello with a HelloVerifyRequest.
            ctx.set_options(SSL.OP_COOKIE_EXCHANGE)
            ctx.set_cookie_generate_callback(lambda conn: cookie)
            ctx.set_cookie_verify_callback(lambda conn, received: received == cookie)
        self.conn = SSL.Connection(ctx, None)
        if server:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()
        self.conn.set_ciphertext_mtu(mtu)
        self.handshake_done = False
        self.received: list[bytes] = []
        self.closed_by_peer = False
        self.error: Exception | None = None

    def step(self) -> None:
        """Drive the handshake or read application data, as far as the BIO allows."""
        try:
            if not self.handshake_done:
                self.conn.do_handshake()
                self.handshake_done = True
            while True:
                self.received.append(self.conn.recv(65536))
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self.closed_by_peer = True
        except SSL.Error as exc:
            self.error = exc

    def feed(self, datagram: bytes) -> None:
        self.conn.bio_write(datagram)
        self.step()

    def outgoing(self) -> list[bytes]:
        out = []
        while True:
            try:
                chunk = self.conn.bio_read(65536)
            except SSL.WantReadError:
                return out
            if not chunk:
                return out
            out.append(chunk)

    def timeout(self) -> float | None:
        return self.conn.DTLSv1_get_timeout()


def pump(ours: DtlsConnection, theirs: OpenSslPeer, now: float = 0.0, rounds: int = 20) -> None:
    """Exchange datagrams without loss until both sides are quiet."""
    for _ in range(rounds):
        moved = False
        for datagram in ours.datagrams_to_send(now):
            theirs.feed(datagram)
            moved = True
        for datagram in theirs.outgoing():
            ours.receive_datagram(datagram, now)
            moved = True
        if not moved:
            return


def drain_events(conn: DtlsConnection) -> list:
    events = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events


def pair(client_cert=None, server_cert=None, **kwargs) -> tuple[DtlsConnection, DtlsConnection]:
    client_cert = client_cert or make_certificate()
    server_cert = server_cert or make_certificate()
    client_kwargs = {k: v for k, v in kwargs.items() if k != "cookie_secret"}
    client = DtlsConnection(DtlsRole.CLIENT, client_cert, [("sha-256", server_cert.fingerprint())], **client_kwargs)
    server = DtlsConnection(DtlsRole.SERVER, server_cert, [("sha-256", client_cert.fingerprint())], **kwargs)
    return client, server


def pump_pair(a: DtlsConnection, b: DtlsConnection, now: float = 0.0, rounds: int = 20) -> None:
    for _ in range(rounds):
        moved = False
        for datagram in a.datagrams_to_send(now):
            b.receive_datagram(datagram, now)
            moved = True
        for datagram in b.datagrams_to_send(now):
            a.receive_datagram(datagram, now)
            moved = True
        if not moved:
            return
