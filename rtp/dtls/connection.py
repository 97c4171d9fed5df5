"""The DTLS 1.2 connection state machine (RFC 6347 over RFC 5246), sans-IO.

Bytes and ``now`` go in (``receive_datagram``, ``handle_timeout``); datagrams, events and
one deadline come out (``datagrams_to_send``, ``next_event``, ``next_deadline``).

Handshake (both roles; the server always asks for the client's certificate, as WebRTC
requires mutual authentication by fingerprint):

    client                                   server
    ClientHello                 -->                           flight 1
                                <--  HelloVerifyRequest       flight 2 (stateless, optional)
    ClientHello (+cookie)       -->                           flight 3
                                <--  ServerHello, Certificate,
                                     ServerKeyExchange,
                                     CertificateRequest,
                                     ServerHelloDone          flight 4
    Certificate, ClientKeyExchange,
    CertificateVerify, [CCS], Finished -->                    flight 5
                                <--  [CCS], Finished          flight 6

A flight is retransmitted whole when its timer fires, or when the peer retransmits the
flight before it (the peer did not get ours). The last flight (server's flight 6) has no
timer; it is resent only when the client repeats flight 5.

Timing (defaults): first retransmission 1 s after a flight (RFC 6347 §4.2.4.1), doubling
up to ``retransmit_max`` = 60 s, so a silent peer sees the flight at 0, 1, 3, 7, 15, 31 s;
``handshake_timeout`` = 60 s after ``start`` (client) or after the first acceptable
ClientHello (server) the connection fails with ``ConnectionFailed(DtlsHandshakeTimeout)``
without sending an alert.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from rtp.dtls import prf
from rtp.dtls.asymmetric import SIGN_SCHEME, SUPPORTED_GROUPS, VERIFY_SCHEMES, KeyShare, sign, verify
from rtp.dtls.certificate import DtlsCertificate, certificate_fingerprint, fingerprints_match
from rtp.dtls.cipher import SUITES, BadRecordMac, RecordCipher, key_block_length, make_record_ciphers
from rtp.dtls.constants import (
    CLIENT_CERTIFICATE_TYPE_ECDSA_SIGN,
    DTLS_1_0,
    DTLS_1_2,
    EC_POINT_FORMAT_UNCOMPRESSED,
    TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
    AlertDescription,
    AlertLevel,
    CipherSuite,
    ContentType,
    ExtensionType,
    HandshakeType,
    NamedGroup,
)
from rtp.dtls.cookie import CookieVerdict, check_client_hello, cookie_is_valid
from rtp.dtls.errors import (
    DtlsAlertReceived,
    DtlsError,
    DtlsFingerprintMismatch,
    DtlsHandshakeFailure,
    DtlsHandshakeTimeout,
    DtlsParseError,
)
from rtp.dtls.events import (
    ApplicationDataReceived,
    ConnectionClosed,
    ConnectionFailed,
    DtlsEvent,
    HandshakeCompleted,
)
from rtp.dtls.fragments import FragmentVerdict, HandshakeReassembler, fragment_message
from rtp.dtls.handshake_messages import (
    HANDSHAKE_HEADER_LENGTH,
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    ClientKeyExchange,
    Finished,
    HelloVerifyRequest,
    ServerHello,
    ServerHelloDone,
    ServerKeyExchange,
    encode_ec_point_formats,
    encode_handshake_header,
    encode_u16_list_extension,
    encode_use_srtp,
    find_extension,
    parse_ec_point_formats,
    parse_renegotiation_info,
    parse_supported_versions_client,
    parse_u16_list_extension,
    parse_use_srtp,
    split_handshake_fragments,
)
from rtp.dtls.record import RECORD_HEADER_LENGTH, ReplayWindow, encode_record_header, split_records
from rtp.dtls.record import RECORD_HEADER as _RECORD_HEADER
from rtp.srtp_profiles import PREFERRED_SRTP_PROFILES, SrtpProfile

DEFAULT_CIPHER_SUITES: tuple[CipherSuite, ...] = (
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
)
#: Largest application payload per record (RFC 5246 §6.2.1).
MAX_PLAINTEXT = 2**14
MIN_MTU = 256
_MAX_HELLO_VERIFY_REQUESTS = 4
#: A peer's epoch-0 record number we continue above (after a stateless HelloVerifyRequest); a
#: larger one is noise or forged, and adopting it could run our 48-bit numbering out.
_MAX_ADOPTED_SEQUENCE = 2**32
_MAX_EARLY_RECORDS = 4
_CCS_BODY = b"\x01"


class DtlsRole(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class DtlsState(enum.Enum):
    NEW = "new"
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


class _Expect(enum.Enum):
    """The next handshake message the state machine accepts."""

    CLIENT_HELLO = enum.auto()
    SERVER_HELLO = enum.auto()  # or a HelloVerifyRequest
    SERVER_CERTIFICATE = enum.auto()
    SERVER_KEY_EXCHANGE = enum.auto()
    CERTIFICATE_REQUEST_OR_DONE = enum.auto()
    SERVER_HELLO_DONE = enum.auto()
    CLIENT_CERTIFICATE = enum.auto()
    CLIENT_KEY_EXCHANGE = enum.auto()
    CERTIFICATE_VERIFY = enum.auto()
    FINISHED = enum.auto()
    NOTHING = enum.auto()  # handshake done


@attrs.define
class DtlsCounters:
    """Records dropped, by reason, plus handshake bookkeeping; all monotonic."""

    malformed: int = 0
    bad_mac: int = 0
    replayed: int = 0
    old_epoch: int = 0
    #: A record in an epoch we have no keys for yet, or application data before the handshake ends.
    unexpected: int = 0
    #: Handshake fragments refused by the reassembler (too far ahead, inconsistent, over a limit).
    fragments_dropped: int = 0
    hello_verify_requests_sent: int = 0
    retransmissions: int = 0
    #: send_application_data refused: the connection is not (or no longer) CONNECTED.
    send_not_connected: int = 0
    #: send_application_data refused: more than one record's plaintext (2^14 bytes).
    send_too_large: int = 0
    #: Resends the peer's retransmissions asked for but that came too soon after the last one.
    retransmissions_limited: int = 0


#: A flight entry is (msg_type, message_seq, body, epoch), or None for ChangeCipherSpec. Bodies
#: are kept, not records, so each retransmission gets fresh record sequence numbers.
_FlightEntry = tuple[int, int, bytes, int] | None


class DtlsConnection:
    def __init__(
        self,
        role: DtlsRole,
        certificate: DtlsCertificate,
        remote_fingerprints: Iterable[tuple[str, str]],
        srtp_profiles: Sequence[SrtpProfile] = PREFERRED_SRTP_PROFILES,
        mtu: int = 1200,
        cookie_secret: bytes | None = None,
        *,
        cookie_context: bytes = b"",
        cipher_suites: Sequence[CipherSuite] = DEFAULT_CIPHER_SUITES,
        groups: Sequence[NamedGroup] = SUPPORTED_GROUPS,
        retransmit_initial: float = 1.0,
        retransmit_max: float = 60.0,
        handshake_timeout: float = 60.0,
    ) -> None:
        if mtu < MIN_MTU:
            raise ValueError(f"mtu must be at least {MIN_MTU}")
        if not cipher_suites or any(s not in SUITES for s in cipher_suites):
            raise ValueError("cipher_suites must be a non-empty selection of DEFAULT_CIPHER_SUITES")
        if not groups or any(g not in SUPPORTED_GROUPS for g in groups):
            raise ValueError("groups must be a non-empty selection of SUPPORTED_GROUPS")
        if cookie_secret is not None and role is not DtlsRole.SERVER:
            raise ValueError("only a server sends HelloVerifyRequest cookies")
        self.role = role
        self.state = DtlsState.NEW
        self.counters = DtlsCounters()
        self._is_client = role is DtlsRole.CLIENT
        self._certificate = certificate
        self._remote_fingerprints = tuple(remote_fingerprints)
        self._srtp_profiles = tuple(srtp_profiles)
        self._mtu = mtu
        self._cookie_secret = cookie_secret
        self._cookie_context = cookie_context
        self._awaiting_cookie = cookie_secret is not None
        self._cipher_suites = tuple(cipher_suites)
        self._groups = tuple(groups)
        self._retransmit_initial = retransmit_initial
        self._retransmit_max = retransmit_max
        self._handshake_timeout = handshake_timeout

        self._events: collections.deque[DtlsEvent] = collections.deque()
        self._outgoing: list[bytes] = []
        #: Server side, before a valid cookie: the one HelloVerifyRequest waiting to go out.
        self._pending_hello_verify: bytes | None = None

        # Handshake state.
        self._expect = _Expect.SERVER_HELLO if self._is_client else _Expect.CLIENT_HELLO
        self._reassembler = HandshakeReassembler()
        self._send_seq = 0
        self._transcript = bytearray()
        self._client_random = b""
        self._server_random = b""
        self._client_hello: ClientHello | None = None
        self._hello_verify_count = 0
        self._suite: CipherSuite | None = None
        self._group: NamedGroup | None = None
        self._key_share: KeyShare | None = None
        self._peer_key_share = b""
        self._srtp_profile: SrtpProfile | None = None
        self._extended_master_secret = False
        self._secure_renegotiation = False
        self._client_sent_point_formats = False
        self._peer_public_key: object = None
        self._peer_certificate_der = b""
        self._certificate_requested = False
        self._master_secret = b""

        # Flight and timers.
        self._flight: list[_FlightEntry] = []
        self._retransmit_at: float | None = None
        self._retransmit_timeout = retransmit_initial
        self._deadline: float | None = None
        self._retransmit_requested = False
        self._peer_resend_at = float("-inf")

        # Record layer.
        self._write_seq0 = 0
        self._write_seq1 = 0
        self._write_epoch = 0
        self._write_cipher: RecordCipher | None = None
        self._read_cipher: RecordCipher | None = None
        self._replay0 = ReplayWindow()
        self._replay1 = ReplayWindow()
        self._epoch1_authenticated = False
        self._close_notify_sent = False
        #: Epoch-1 records that arrived before we had the keys to open them.
        self._early_records: list[tuple[int, int, int, int, bytes]] = []
        #: Authenticated application data that arrived before the peer's Finished.
        self._early_application_data: list[bytes] = []

    # ------------------------------------------------------------------ public API

    @property
    def srtp_profile(self) -> SrtpProfile | None:
        return self._srtp_profile

    @property
    def cipher_suite(self) -> CipherSuite | None:
        return self._suite

    @property
    def peer_certificate_der(self) -> bytes:
        return self._peer_certificate_der

    def start(self, now: float) -> None:
        """Client: send the ClientHello. Server: nothing to do; it answers what arrives."""
        if self.state is not DtlsState.NEW or not self._is_client:
            return
        self.state = DtlsState.HANDSHAKING
        self._deadline = now + self._handshake_timeout
        self._client_random = os.urandom(32)
        self._client_hello = self._build_client_hello(cookie=b"")
        self._start_transcript()
        self._send_flight([self._handshake_entry(HandshakeType.CLIENT_HELLO, self._client_hello.serialize())], now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Feed one UDP datagram. Malformed, replayed or forged records are dropped and
        counted; fatal handshake problems end in a ConnectionFailed event, never an exception."""
        state = self.state
        if state is DtlsState.CONNECTED and len(data) > RECORD_HEADER_LENGTH and data[0] == ContentType.APPLICATION_DATA:
            if self._receive_application_record(data):
                return
        elif state is DtlsState.CLOSED or state is DtlsState.FAILED:
            return
        if self._awaiting_cookie:
            verdict, reply = check_client_hello(self._cookie_secret, data, self._cookie_context)  # type: ignore[arg-type]
            if verdict is CookieVerdict.HELLO_VERIFY_REQUEST:
                self._pending_hello_verify = reply
                self.counters.hello_verify_requests_sent += 1
                return
            if verdict is CookieVerdict.IGNORE:
                self.counters.unexpected += 1
                return
            self._awaiting_cookie = False
            self._pending_hello_verify = None
        records, truncated = split_records(data)
        if truncated:
            self.counters.malformed += 1
        self._retransmit_requested = False
        try:
            for record in records:
                self._handle_record(*record, now)
                if self.state in (DtlsState.CLOSED, DtlsState.FAILED):
                    return
                if self._early_records and self._read_cipher is not None:
                    early, self._early_records = self._early_records, []
                    for held in early:
                        self._handle_record(*held, now)
                        if self.state in (DtlsState.CLOSED, DtlsState.FAILED):
                            return
            if self._retransmit_requested and self._flight and self._may_resend_on_peer_retransmit():
                # At most one resend per half initial timeout in answer to the peer's: two sides
                # each answering the other's resend at once (one stuck waiting on a message that
                # never completes) would otherwise volley flights for as long as the handshake lasts.
                if now - self._peer_resend_at >= self._retransmit_initial / 2:
                    self._peer_resend_at = now
                    self.counters.retransmissions += 1
                    self._transmit_flight()
                else:
                    self.counters.retransmissions_limited += 1
        except DtlsError as exc:
            self._fail(exc, send_alert=True)
        except DtlsParseError as exc:
            # A whole, authenticated handshake message that does not parse: decode_error.
            self._fail(DtlsError(str(exc), AlertDescription.DECODE_ERROR), send_alert=True)

    def _receive_application_record(self, data: bytes) -> bool:
        """Per-packet fast path: a datagram that is exactly one epoch-1 application-data record.

        Returns False (nothing consumed) for anything else, which then takes the general path.
        """
        _type, version, epoch, seq_hi, seq_lo, length = _RECORD_HEADER.unpack_from(data)
        if epoch != 1 or version != DTLS_1_2 or length + RECORD_HEADER_LENGTH != len(data):
            return False
        seq = (seq_hi << 32) | seq_lo
        window = self._replay1
        if not window.is_fresh(seq):
            self.counters.replayed += 1
            return True
        try:
            plaintext = self._read_cipher.open(ContentType.APPLICATION_DATA, version, 1, seq, data[RECORD_HEADER_LENGTH:])  # type: ignore[union-attr]
        except BadRecordMac:
            self.counters.bad_mac += 1
            return True
        window.mark(seq)
        self._events.append(ApplicationDataReceived(plaintext))
        return True

    def set_remote_fingerprints(self, remote_fingerprints: Iterable[tuple[str, str]]) -> None:
        """Replace the expected peer fingerprints (e.g. the SDP answer arrived late); they are
        checked when the peer's Certificate message arrives."""
        self._remote_fingerprints = tuple(remote_fingerprints)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out = self._outgoing
        self._outgoing = []
        if self._pending_hello_verify is not None:
            out.append(self._pending_hello_verify)
            self._pending_hello_verify = None
        return out

    def next_deadline(self) -> float | None:
        if self.state is not DtlsState.HANDSHAKING:
            return None
        timers = [t for t in (self._retransmit_at, self._deadline) if t is not None]
        return min(timers) if timers else None

    def handle_timeout(self, now: float) -> None:
        if self.state is not DtlsState.HANDSHAKING:
            return
        if self._deadline is not None and now >= self._deadline:
            self._fail(
                DtlsHandshakeTimeout(f"handshake not complete after {self._handshake_timeout:g} s"), send_alert=False
            )
            return
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._retransmit_timeout = min(self._retransmit_timeout * 2, self._retransmit_max)
            self._retransmit_at = now + self._retransmit_timeout
            self.counters.retransmissions += 1
            self._transmit_flight()

    def next_event(self) -> DtlsEvent | None:
        return self._events.popleft() if self._events else None

    def send_application_data(self, data: bytes) -> bool:
        """Protect ``data`` as one record in its own datagram.

        Like every send in ``rtp/``, returns False (and counts why) instead of raising when
        it cannot: not connected, or more than one record's worth of plaintext.
        """
        if self.state is not DtlsState.CONNECTED:
            self.counters.send_not_connected += 1
            return False
        if len(data) > MAX_PLAINTEXT:
            self.counters.send_too_large += 1
            return False
        seq = self._write_seq1
        self._write_seq1 = seq + 1
        payload = self._write_cipher.seal(ContentType.APPLICATION_DATA, DTLS_1_2, 1, seq, data)  # type: ignore[union-attr]
        self._outgoing.append(
            encode_record_header(ContentType.APPLICATION_DATA, DTLS_1_2, 1, seq, len(payload)) + payload
        )
        return True

    def close(self) -> None:
        """Send close_notify (if a handshake was under way or done) and stop."""
        if self.state in (DtlsState.CLOSED, DtlsState.FAILED):
            return
        if self.state is not DtlsState.NEW:
            self._send_alert(AlertLevel.WARNING, AlertDescription.CLOSE_NOTIFY)
        self._enter_closed(by_peer=False)

    def export_keying_material(self, label: bytes, length: int, context: bytes | None = None) -> bytes:
        """RFC 5705 exporter; for DTLS-SRTP use ``(b"EXTRACTOR-dtls_srtp", profile.keying_material_length)``."""
        if not self._master_secret or self.state is DtlsState.HANDSHAKING or self._expect is not _Expect.NOTHING:
            raise DtlsError("keying material is only available after the handshake")
        return prf.export_keying_material(
            SUITES[self._suite].hash_name,  # type: ignore[index]
            self._master_secret,
            label,
            self._client_random,
            self._server_random,
            context,
            length,
        )

    # ------------------------------------------------------------------ record layer

    def _handle_record(self, content_type: int, version: int, epoch: int, seq: int, payload: bytes, now: float) -> None:
        if epoch == 0:
            if version != DTLS_1_2 and version != DTLS_1_0:
                self.counters.malformed += 1
                return
            if not self._replay0.is_fresh(seq):
                self.counters.replayed += 1
                return
            if content_type == ContentType.APPLICATION_DATA or (
                content_type == ContentType.ALERT and self._epoch1_authenticated
            ):
                # Unprotected data or alerts once the peer speaks epoch 1 can only be forged or stale.
                if self._epoch1_authenticated:
                    self.counters.old_epoch += 1
                else:
                    self.counters.unexpected += 1
                return
            plaintext = payload
        elif epoch == 1:
            cipher = self._read_cipher
            if cipher is None:
                # The peer's Finished can overtake its ClientKeyExchange when flight 5 spans
                # datagrams; hold a few such records instead of waiting for a retransmission.
                if self.state is DtlsState.HANDSHAKING and len(self._early_records) < _MAX_EARLY_RECORDS:
                    self._early_records.append((content_type, version, epoch, seq, payload))
                else:
                    self.counters.unexpected += 1
                return
            if version != DTLS_1_2:
                self.counters.malformed += 1
                return
            if not self._replay1.is_fresh(seq):
                self.counters.replayed += 1
                return
            try:
                plaintext = cipher.open(content_type, version, 1, seq, payload)
            except BadRecordMac:
                self.counters.bad_mac += 1
                return
            self._replay1.mark(seq)
            self._epoch1_authenticated = True
            if content_type == ContentType.APPLICATION_DATA:
                if self.state is DtlsState.CONNECTED:
                    self._events.append(ApplicationDataReceived(plaintext))
                elif self.state is DtlsState.HANDSHAKING and len(self._early_application_data) < _MAX_EARLY_RECORDS:
                    # The server may send data right after its Finished, which can be lost
                    # or overtaken; keep it for after HandshakeCompleted (it authenticated).
                    self._early_application_data.append(plaintext)
                else:
                    self.counters.unexpected += 1
                return
        else:
            # We never renegotiate, so epochs above 1 are garbage.
            self.counters.unexpected += 1
            return

        was_new = self.state is DtlsState.NEW
        write_seq0 = self._write_seq0
        if epoch == 0 and was_new and seq < _MAX_ADOPTED_SEQUENCE:
            # A server that answered with a stateless HelloVerifyRequest reused the
            # ClientHello's record number; continue above it (RFC 6347 §4.2.1), as OpenSSL does.
            # Set before the hello is handled (handling it sends our flight), undone below if
            # the record did not complete one.
            self._write_seq0 = max(write_seq0, seq)
        accepted = False
        if content_type == ContentType.HANDSHAKE:
            accepted = self._handle_handshake_record(plaintext, epoch, now)
        elif content_type == ContentType.ALERT:
            self._handle_alert(plaintext)
            accepted = True
        elif content_type == ContentType.CHANGE_CIPHER_SPEC:
            # Epoch-1 records are accepted as soon as we hold the keys, so the CCS itself
            # carries no information; Finished authenticates the switch.
            if plaintext != _CCS_BODY:
                self.counters.malformed += 1
            else:
                accepted = True
        else:
            self.counters.unexpected += 1
        if epoch == 0:
            # Epoch 0 has no MAC: only a record that meant something moves the window. Marked on
            # arrival, one garbage record with a huge sequence number (or one fragment of a forged
            # hello) would make every genuine ClientHello after it a "replay", and a fresh server
            # would wait forever. A server still listening has committed to nothing: a replay
            # of what it saw there is harmless, so it marks nothing until a hello is accepted.
            if was_new and self.state is DtlsState.NEW:
                self._write_seq0 = write_seq0
            elif accepted:
                self._replay0.mark(seq)

    def _handle_alert(self, payload: bytes) -> None:
        if len(payload) != 2:
            self.counters.malformed += 1
            return
        level, description = payload[0], payload[1]
        if description == AlertDescription.CLOSE_NOTIFY:
            if self.state is DtlsState.NEW:
                return
            self._send_alert(AlertLevel.WARNING, AlertDescription.CLOSE_NOTIFY)
            self._enter_closed(by_peer=True)
        elif level == AlertLevel.WARNING:
            return  # e.g. no_renegotiation: nothing to do
        elif self.state is DtlsState.NEW:
            self.counters.unexpected += 1
        else:
            self.state = DtlsState.FAILED
            self._retransmit_at = None
            self._events.append(ConnectionFailed(DtlsAlertReceived(AlertDescription.from_wire(description))))

    def _handle_handshake_record(self, payload: bytes, epoch: int, now: float) -> bool:
        """Feed the record's fragments to the reassembler; True if it took any of them (or
        recognised one as a retransmission), False when the record was noise."""
        try:
            fragments = split_handshake_fragments(payload)
        except DtlsParseError:
            self.counters.malformed += 1
            return False
        taken = False
        for msg_type, length, message_seq, offset, data in fragments:
            if self.state is DtlsState.NEW:
                # A fresh server only listens for ClientHello; anything else is noise. Its
                # message_seq is 0, or 1 after a cookie exchange. Nothing is committed until a
                # whole ClientHello is accepted, so a fragment of another message_seq, or at odds
                # with what is buffered (another length), replaces it: a forged partial hello
                # must not make every genuine one after it stale or "inconsistent".
                if msg_type != HandshakeType.CLIENT_HELLO:
                    self.counters.unexpected += 1
                    continue
                if message_seq != self._reassembler.next_seq:
                    self._reassembler.clear()
                    self._reassembler.next_seq = message_seq
            verdict = self._reassembler.add(msg_type, length, message_seq, offset, data, epoch)
            if verdict is FragmentVerdict.DROPPED and self.state is DtlsState.NEW:
                self._reassembler.clear()
                verdict = self._reassembler.add(msg_type, length, message_seq, offset, data, epoch)
            if verdict is FragmentVerdict.OLD:
                self._retransmit_requested = True
                taken = True
            elif verdict is FragmentVerdict.DROPPED:
                self.counters.fragments_dropped += 1
            else:
                taken = True
        while True:
            message = self._reassembler.pop()
            if message is None:
                return taken
            msg_type, message_seq, msg_epoch, body = message
            self._handle_message(msg_type, message_seq, msg_epoch, body, now)
            if self.state in (DtlsState.CLOSED, DtlsState.FAILED):
                return taken

    def _may_resend_on_peer_retransmit(self) -> bool:
        # The client's last flight needs no resend once the server's Finished arrived; if
        # the client answered server retransmissions then, the two would ping-pong forever.
        if self.state is DtlsState.HANDSHAKING:
            return True
        return self.state is DtlsState.CONNECTED and not self._is_client

    def _encode_record(self, content_type: int, plaintext: bytes, epoch: int) -> bytes:
        if epoch == 0:
            seq = self._write_seq0
            self._write_seq0 = seq + 1
            payload = plaintext
        else:
            seq = self._write_seq1
            self._write_seq1 = seq + 1
            payload = self._write_cipher.seal(content_type, DTLS_1_2, epoch, seq, plaintext)  # type: ignore[union-attr]
        return encode_record_header(content_type, DTLS_1_2, epoch, seq, len(payload)) + payload

    def _max_fragment(self, epoch: int) -> int:
        overhead = RECORD_HEADER_LENGTH + HANDSHAKE_HEADER_LENGTH
        if epoch:
            overhead += self._write_cipher.overhead  # type: ignore[union-attr]
        return self._mtu - overhead

    def _transmit_flight(self) -> None:
        """(Re)send the current flight with fresh record sequence numbers, packed into MTU-sized datagrams."""
        records: list[bytes] = []
        for entry in self._flight:
            if entry is None:
                records.append(self._encode_record(ContentType.CHANGE_CIPHER_SPEC, _CCS_BODY, 0))
                continue
            msg_type, message_seq, body, epoch = entry
            for fragment in fragment_message(msg_type, message_seq, body, self._max_fragment(epoch)):
                records.append(self._encode_record(ContentType.HANDSHAKE, fragment, epoch))
        datagram = b""
        for record in records:
            if datagram and len(datagram) + len(record) > self._mtu:
                self._outgoing.append(datagram)
                datagram = b""
            datagram += record
        if datagram:
            self._outgoing.append(datagram)

    def _send_flight(self, flight: list[_FlightEntry], now: float, expect_reply: bool = True) -> None:
        self._flight = flight
        self._retransmit_timeout = self._retransmit_initial
        self._retransmit_at = now + self._retransmit_timeout if expect_reply else None
        self._transmit_flight()

    def _send_alert(self, level: AlertLevel, description: AlertDescription) -> None:
        if description == AlertDescription.CLOSE_NOTIFY:
            if self._close_notify_sent:
                return
            self._close_notify_sent = True
        self._outgoing.append(self._encode_record(ContentType.ALERT, bytes((level, description)), self._write_epoch))

    def _fail(self, error: DtlsError, send_alert: bool) -> None:
        if send_alert and self.state is not DtlsState.NEW:
            self._send_alert(AlertLevel.FATAL, error.alert)
        self.state = DtlsState.FAILED
        self._retransmit_at = None
        self._flight = []
        self._events.append(ConnectionFailed(error))

    def _enter_closed(self, by_peer: bool) -> None:
        self.state = DtlsState.CLOSED
        self._retransmit_at = None
        self._flight = []
        self._events.append(ConnectionClosed(AlertDescription.CLOSE_NOTIFY, by_peer))

    # ------------------------------------------------------------------ handshake plumbing

    def _handshake_entry(self, msg_type: HandshakeType, body: bytes, epoch: int = 0) -> tuple[int, int, bytes, int]:
        """Give the message its sequence number and add it to the transcript."""
        seq = self._send_seq
        self._send_seq += 1
        self._transcript += encode_handshake_header(msg_type, len(body), seq, 0, len(body)) + body
        return (msg_type, seq, body, epoch)

    def _start_transcript(self) -> None:
        self._transcript = bytearray()

    def _transcript_hash(self) -> bytes:
        return hashlib.new(SUITES[self._suite].hash_name, self._transcript).digest()  # type: ignore[index]

    def _add_to_transcript(self, msg_type: int, seq: int, body: bytes) -> None:
        self._transcript += encode_handshake_header(msg_type, len(body), seq, 0, len(body)) + body

    def _handle_message(self, msg_type: int, seq: int, epoch: int, body: bytes, now: float) -> None:
        expect = self._expect
        if expect is _Expect.NOTHING:
            # A new handshake on an established connection: renegotiation, which we refuse.
            self._send_alert(AlertLevel.WARNING, AlertDescription.NO_RENEGOTIATION)
            return
        if (msg_type == HandshakeType.FINISHED) != (epoch == 1):
            raise DtlsError("Finished must be the only handshake message under epoch 1", AlertDescription.UNEXPECTED_MESSAGE)
        handler = _HANDLERS.get((expect, msg_type))
        if handler is None:
            raise DtlsError(
                f"unexpected {_type_name(msg_type)} while expecting {expect.name.lower()}",
                AlertDescription.UNEXPECTED_MESSAGE,
            )
        handler(self, seq, body, now)

    # ------------------------------------------------------------------ client side

    def _build_client_hello(self, cookie: bytes) -> ClientHello:
        extensions = [
            # RFC 8422 §5.1: this list also names the curves we accept for the peer's ECDSA
            # certificate, so P-256 stays in even when key exchange is restricted to x25519.
            (ExtensionType.SUPPORTED_GROUPS, encode_u16_list_extension(self._offered_groups())),
            (ExtensionType.EC_POINT_FORMATS, encode_ec_point_formats(bytes((EC_POINT_FORMAT_UNCOMPRESSED,)))),
            (ExtensionType.SIGNATURE_ALGORITHMS, encode_u16_list_extension(VERIFY_SCHEMES)),
            (ExtensionType.EXTENDED_MASTER_SECRET, b""),
            (ExtensionType.RENEGOTIATION_INFO, b"\x00"),
        ]
        if self._srtp_profiles:
            extensions.append((ExtensionType.USE_SRTP, encode_use_srtp(self._srtp_profiles)))
        return ClientHello(
            DTLS_1_2, self._client_random, b"", cookie, tuple(self._cipher_suites), b"\x00", tuple(extensions)
        )

    def _offered_groups(self) -> tuple[NamedGroup, ...]:
        if NamedGroup.SECP256R1 in self._groups:
            return self._groups
        return self._groups + (NamedGroup.SECP256R1,)

    def _client_on_hello_verify_request(self, seq: int, body: bytes, now: float) -> None:
        request = HelloVerifyRequest.parse(body)
        self._hello_verify_count += 1
        if self._hello_verify_count > _MAX_HELLO_VERIFY_REQUESTS:
            raise DtlsHandshakeFailure("server keeps sending HelloVerifyRequest")
        # RFC 6347 §4.2.1: the HelloVerifyRequest and the ClientHello before it are not
        # part of the transcript; start again from the ClientHello carrying the cookie.
        self._client_hello = self._build_client_hello(request.cookie)
        # The exchange restarts: a stateless server may number its records from zero again.
        self._replay0 = ReplayWindow()
        self._start_transcript()
        self._send_flight([self._handshake_entry(HandshakeType.CLIENT_HELLO, self._client_hello.serialize())], now)

    def _client_on_server_hello(self, seq: int, body: bytes, now: float) -> None:
        hello = ServerHello.parse(body)
        if hello.server_version != DTLS_1_2:
            raise DtlsError("server chose a version other than DTLS 1.2", AlertDescription.PROTOCOL_VERSION)
        if hello.cipher_suite not in self._cipher_suites:
            raise DtlsError("server chose a cipher suite we did not offer", AlertDescription.ILLEGAL_PARAMETER)
        if hello.compression_method != 0:
            raise DtlsError("server chose compression", AlertDescription.ILLEGAL_PARAMETER)
        offered = {t for t, _ in self._client_hello.extensions}  # type: ignore[union-attr]
        for ext_type, _ in hello.extensions:
            if ext_type not in offered:
                raise DtlsError(f"server sent extension {ext_type} we did not offer", AlertDescription.UNSUPPORTED_EXTENSION)
        reneg = find_extension(hello.extensions, ExtensionType.RENEGOTIATION_INFO)
        if reneg is not None and parse_renegotiation_info(reneg) != b"":
            raise DtlsHandshakeFailure("non-empty renegotiation_info on an initial handshake")
        self._extended_master_secret = find_extension(hello.extensions, ExtensionType.EXTENDED_MASTER_SECRET) is not None
        if self._srtp_profiles:
            srtp = find_extension(hello.extensions, ExtensionType.USE_SRTP)
            if srtp is None:
                raise DtlsHandshakeFailure("server did not agree to DTLS-SRTP")
            profiles, mki = parse_use_srtp(srtp)
            if len(profiles) != 1 or profiles[0] not in self._srtp_profiles or mki:
                raise DtlsError("server chose an SRTP profile we did not offer", AlertDescription.ILLEGAL_PARAMETER)
            self._srtp_profile = SrtpProfile(profiles[0])
        self._suite = CipherSuite(hello.cipher_suite)
        self._server_random = hello.random
        self._add_to_transcript(HandshakeType.SERVER_HELLO, seq, body)
        self._expect = _Expect.SERVER_CERTIFICATE

    def _client_on_certificate(self, seq: int, body: bytes, now: float) -> None:
        self._accept_peer_certificate(body)
        if not isinstance(self._peer_public_key, ec.EllipticCurvePublicKey):
            raise DtlsError("ECDSA cipher suites need an ECDSA server certificate", AlertDescription.UNSUPPORTED_CERTIFICATE)
        self._add_to_transcript(HandshakeType.CERTIFICATE, seq, body)
        self._expect = _Expect.SERVER_KEY_EXCHANGE

    def _client_on_server_key_exchange(self, seq: int, body: bytes, now: float) -> None:
        exchange = ServerKeyExchange.parse(body)
        if exchange.named_group not in self._offered_groups():
            raise DtlsError("server picked a group we did not offer", AlertDescription.ILLEGAL_PARAMETER)
        if exchange.signature_scheme not in VERIFY_SCHEMES:
            raise DtlsError("server signed with a scheme we did not offer", AlertDescription.ILLEGAL_PARAMETER)
        signed = self._client_random + self._server_random + exchange.params()
        if not verify(self._peer_public_key, exchange.signature_scheme, exchange.signature, signed):
            raise DtlsError("ServerKeyExchange signature does not verify", AlertDescription.DECRYPT_ERROR)
        self._group = NamedGroup(exchange.named_group)
        self._peer_key_share = exchange.public_key
        self._add_to_transcript(HandshakeType.SERVER_KEY_EXCHANGE, seq, body)
        self._expect = _Expect.CERTIFICATE_REQUEST_OR_DONE

    def _client_on_certificate_request(self, seq: int, body: bytes, now: float) -> None:
        request = CertificateRequest.parse(body)
        if CLIENT_CERTIFICATE_TYPE_ECDSA_SIGN not in request.certificate_types or SIGN_SCHEME not in request.signature_schemes:
            raise DtlsHandshakeFailure("server does not accept an ECDSA P-256/SHA-256 client certificate")
        self._certificate_requested = True
        self._add_to_transcript(HandshakeType.CERTIFICATE_REQUEST, seq, body)
        self._expect = _Expect.SERVER_HELLO_DONE

    def _client_on_server_hello_done(self, seq: int, body: bytes, now: float) -> None:
        ServerHelloDone.parse(body)
        self._add_to_transcript(HandshakeType.SERVER_HELLO_DONE, seq, body)
        flight: list[_FlightEntry] = []
        if self._certificate_requested:
            flight.append(self._handshake_entry(HandshakeType.CERTIFICATE, Certificate((self._certificate.der,)).serialize()))
        share = KeyShare(self._group)  # type: ignore[arg-type]
        premaster = share.exchange(self._peer_key_share)
        flight.append(self._handshake_entry(HandshakeType.CLIENT_KEY_EXCHANGE, ClientKeyExchange(share.public_bytes).serialize()))
        self._derive_keys(premaster)
        if self._certificate_requested:
            signature = sign(self._certificate.private_key, bytes(self._transcript))
            flight.append(self._handshake_entry(HandshakeType.CERTIFICATE_VERIFY, CertificateVerify(SIGN_SCHEME, signature).serialize()))
        flight.append(None)
        self._write_epoch = 1
        flight.append(self._handshake_entry(HandshakeType.FINISHED, self._finished(b"client finished"), epoch=1))
        self._expect = _Expect.FINISHED
        self._send_flight(flight, now)

    def _client_on_finished(self, seq: int, body: bytes, now: float) -> None:
        received = Finished.parse(body).verify_data
        if not hmac.compare_digest(received, self._finished(b"server finished")):
            raise DtlsError("server Finished does not verify", AlertDescription.DECRYPT_ERROR)
        self._add_to_transcript(HandshakeType.FINISHED, seq, body)
        self._complete()

    # ------------------------------------------------------------------ server side

    def _server_on_client_hello(self, seq: int, body: bytes, now: float) -> None:
        hello = ClientHello.parse(body)
        if self._cookie_secret is not None and not cookie_is_valid(self._cookie_secret, hello, self._cookie_context):
            raise DtlsError("ClientHello cookie does not verify", AlertDescription.ILLEGAL_PARAMETER)
        self.state = DtlsState.HANDSHAKING
        self._deadline = now + self._handshake_timeout
        exts = hello.extensions
        versions = find_extension(exts, ExtensionType.SUPPORTED_VERSIONS)
        # "Newer" DTLS versions are numerically smaller; a client capped below 1.2 is refused.
        # A DTLS 1.3 client offering 1.2 too (supported_versions) gets 1.2: we ignore its key_share.
        if hello.client_version > DTLS_1_2 or (versions is not None and DTLS_1_2 not in parse_supported_versions_client(versions)):
            raise DtlsError("client does not offer DTLS 1.2", AlertDescription.PROTOCOL_VERSION)
        if 0 not in hello.compression_methods:
            raise DtlsError("client does not offer null compression", AlertDescription.ILLEGAL_PARAMETER)
        suite = next((s for s in self._cipher_suites if s in hello.cipher_suites), None)
        if suite is None:
            raise DtlsHandshakeFailure("no cipher suite in common")
        groups_ext = find_extension(exts, ExtensionType.SUPPORTED_GROUPS)
        client_groups = parse_u16_list_extension(groups_ext) if groups_ext is not None else [NamedGroup.SECP256R1]
        group = next((g for g in self._groups if g in client_groups), None)
        if group is None:
            raise DtlsHandshakeFailure("no ECDHE group in common")
        formats = find_extension(exts, ExtensionType.EC_POINT_FORMATS)
        if formats is not None and EC_POINT_FORMAT_UNCOMPRESSED not in parse_ec_point_formats(formats):
            raise DtlsError("client does not accept uncompressed points", AlertDescription.ILLEGAL_PARAMETER)
        schemes = find_extension(exts, ExtensionType.SIGNATURE_ALGORITHMS)
        if schemes is not None and SIGN_SCHEME not in parse_u16_list_extension(schemes):
            raise DtlsHandshakeFailure("client does not accept ecdsa_secp256r1_sha256 signatures")
        if self._srtp_profiles:
            srtp = find_extension(exts, ExtensionType.USE_SRTP)
            if srtp is None:
                raise DtlsHandshakeFailure("client did not offer use_srtp")
            offered, _mki = parse_use_srtp(srtp)  # a client MKI is allowed; we answer without one
            profile = next((p for p in self._srtp_profiles if p in offered), None)
            if profile is None:
                raise DtlsHandshakeFailure("no SRTP protection profile in common")
            self._srtp_profile = profile
        reneg = find_extension(exts, ExtensionType.RENEGOTIATION_INFO)
        if reneg is not None and parse_renegotiation_info(reneg) != b"":
            raise DtlsHandshakeFailure("non-empty renegotiation_info on an initial handshake")
        self._secure_renegotiation = reneg is not None or TLS_EMPTY_RENEGOTIATION_INFO_SCSV in hello.cipher_suites
        self._extended_master_secret = find_extension(exts, ExtensionType.EXTENDED_MASTER_SECRET) is not None
        self._suite = suite
        self._group = group
        self._client_hello = hello
        self._client_random = hello.random
        self._server_random = os.urandom(32)

        # Our message_seq continues from the client's, as OpenSSL does after a stateless cookie exchange.
        self._send_seq = seq
        self._start_transcript()
        self._add_to_transcript(HandshakeType.CLIENT_HELLO, seq, body)

        extensions = []
        if self._secure_renegotiation:
            extensions.append((ExtensionType.RENEGOTIATION_INFO, b"\x00"))
        if self._extended_master_secret:
            extensions.append((ExtensionType.EXTENDED_MASTER_SECRET, b""))
        if formats is not None:
            extensions.append((ExtensionType.EC_POINT_FORMATS, encode_ec_point_formats(bytes((EC_POINT_FORMAT_UNCOMPRESSED,)))))
        if self._srtp_profile is not None:
            extensions.append((ExtensionType.USE_SRTP, encode_use_srtp([self._srtp_profile])))
        server_hello = ServerHello(DTLS_1_2, self._server_random, b"", suite, 0, tuple(extensions))
        self._key_share = KeyShare(group)
        exchange = ServerKeyExchange(group, self._key_share.public_bytes, SIGN_SCHEME, b"")
        signature = sign(self._certificate.private_key, self._client_random + self._server_random + exchange.params())
        exchange = attrs.evolve(exchange, signature=signature)
        request = CertificateRequest(bytes((CLIENT_CERTIFICATE_TYPE_ECDSA_SIGN,)), VERIFY_SCHEMES)
        flight = [
            self._handshake_entry(HandshakeType.SERVER_HELLO, server_hello.serialize()),
            self._handshake_entry(HandshakeType.CERTIFICATE, Certificate((self._certificate.der,)).serialize()),
            self._handshake_entry(HandshakeType.SERVER_KEY_EXCHANGE, exchange.serialize()),
            self._handshake_entry(HandshakeType.CERTIFICATE_REQUEST, request.serialize()),
            self._handshake_entry(HandshakeType.SERVER_HELLO_DONE, b""),
        ]
        self._expect = _Expect.CLIENT_CERTIFICATE
        self._send_flight(flight, now)

    def _server_on_certificate(self, seq: int, body: bytes, now: float) -> None:
        self._accept_peer_certificate(body)
        self._add_to_transcript(HandshakeType.CERTIFICATE, seq, body)
        self._expect = _Expect.CLIENT_KEY_EXCHANGE

    def _server_on_client_key_exchange(self, seq: int, body: bytes, now: float) -> None:
        exchange = ClientKeyExchange.parse(body)
        premaster = self._key_share.exchange(exchange.public_key)  # type: ignore[union-attr]
        self._add_to_transcript(HandshakeType.CLIENT_KEY_EXCHANGE, seq, body)
        self._derive_keys(premaster)
        self._expect = _Expect.CERTIFICATE_VERIFY

    def _server_on_certificate_verify(self, seq: int, body: bytes, now: float) -> None:
        message = CertificateVerify.parse(body)
        if message.signature_scheme not in VERIFY_SCHEMES:
            raise DtlsError("client signed with a scheme we did not offer", AlertDescription.ILLEGAL_PARAMETER)
        if not verify(self._peer_public_key, message.signature_scheme, message.signature, bytes(self._transcript)):
            raise DtlsError("CertificateVerify signature does not verify", AlertDescription.DECRYPT_ERROR)
        self._add_to_transcript(HandshakeType.CERTIFICATE_VERIFY, seq, body)
        self._expect = _Expect.FINISHED

    def _server_on_finished(self, seq: int, body: bytes, now: float) -> None:
        received = Finished.parse(body).verify_data
        if not hmac.compare_digest(received, self._finished(b"client finished")):
            raise DtlsError("client Finished does not verify", AlertDescription.DECRYPT_ERROR)
        self._add_to_transcript(HandshakeType.FINISHED, seq, body)
        self._write_epoch = 1
        finished = self._handshake_entry(HandshakeType.FINISHED, self._finished(b"server finished"), epoch=1)
        self._send_flight([None, finished], now, expect_reply=False)
        self._complete()

    # ------------------------------------------------------------------ shared steps

    def _accept_peer_certificate(self, body: bytes) -> None:
        chain = Certificate.parse(body).certificates
        if not chain:
            raise DtlsHandshakeFailure("peer sent no certificate")
        der = chain[0]
        if not fingerprints_match(der, self._remote_fingerprints):
            raise DtlsFingerprintMismatch("peer certificate does not match the signalled fingerprint")
        try:
            self._peer_public_key = x509.load_der_x509_certificate(der).public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise DtlsError("peer certificate does not parse", AlertDescription.BAD_CERTIFICATE) from None
        self._peer_certificate_der = der

    def _derive_keys(self, premaster: bytes) -> None:
        hash_name = SUITES[self._suite].hash_name  # type: ignore[index]
        if self._extended_master_secret:
            # RFC 7627 §4: session_hash covers the transcript up to and including ClientKeyExchange.
            self._master_secret = prf.extended_master_secret(hash_name, premaster, self._transcript_hash())
        else:
            self._master_secret = prf.master_secret(hash_name, premaster, self._client_random, self._server_random)
        block = prf.key_block(
            hash_name, self._master_secret, self._client_random, self._server_random, key_block_length(self._suite)  # type: ignore[arg-type]
        )
        self._write_cipher, self._read_cipher = make_record_ciphers(self._suite, block, self._is_client)  # type: ignore[arg-type]

    def _finished(self, label: bytes) -> bytes:
        return prf.verify_data(SUITES[self._suite].hash_name, self._master_secret, label, self._transcript_hash())  # type: ignore[index]

    def _complete(self) -> None:
        self._expect = _Expect.NOTHING
        self.state = DtlsState.CONNECTED
        self._retransmit_at = None
        self._deadline = None
        self._key_share = None
        self._events.append(
            HandshakeCompleted(
                srtp_profile=self._srtp_profile,
                cipher_suite=self._suite,  # type: ignore[arg-type]
                peer_fingerprint=certificate_fingerprint(self._peer_certificate_der),
                group=self._group,  # type: ignore[arg-type]
                extended_master_secret=self._extended_master_secret,
            )
        )
        for data in self._early_application_data:
            self._events.append(ApplicationDataReceived(data))
        self._early_application_data = []
        self._early_records = []


def _type_name(msg_type: int) -> str:
    try:
        return HandshakeType(msg_type).name.lower()
    except ValueError:
        return f"handshake type {msg_type}"


_HANDLERS = {
    (_Expect.SERVER_HELLO, HandshakeType.HELLO_VERIFY_REQUEST): DtlsConnection._client_on_hello_verify_request,
    (_Expect.SERVER_HELLO, HandshakeType.SERVER_HELLO): DtlsConnection._client_on_server_hello,
    (_Expect.SERVER_CERTIFICATE, HandshakeType.CERTIFICATE): DtlsConnection._client_on_certificate,
    (_Expect.SERVER_KEY_EXCHANGE, HandshakeType.SERVER_KEY_EXCHANGE): DtlsConnection._client_on_server_key_exchange,
    (_Expect.CERTIFICATE_REQUEST_OR_DONE, HandshakeType.CERTIFICATE_REQUEST): DtlsConnection._client_on_certificate_request,
    (_Expect.CERTIFICATE_REQUEST_OR_DONE, HandshakeType.SERVER_HELLO_DONE): DtlsConnection._client_on_server_hello_done,
    (_Expect.SERVER_HELLO_DONE, HandshakeType.SERVER_HELLO_DONE): DtlsConnection._client_on_server_hello_done,
    (_Expect.CLIENT_HELLO, HandshakeType.CLIENT_HELLO): DtlsConnection._server_on_client_hello,
    (_Expect.CLIENT_CERTIFICATE, HandshakeType.CERTIFICATE): DtlsConnection._server_on_certificate,
    (_Expect.CLIENT_KEY_EXCHANGE, HandshakeType.CLIENT_KEY_EXCHANGE): DtlsConnection._server_on_client_key_exchange,
    (_Expect.CERTIFICATE_VERIFY, HandshakeType.CERTIFICATE_VERIFY): DtlsConnection._server_on_certificate_verify,
}


def _finished_handler(self: DtlsConnection, seq: int, body: bytes, now: float) -> None:
    if self._is_client:
        self._client_on_finished(seq, body, now)
    else:
        self._server_on_finished(seq, body, now)


_HANDLERS[(_Expect.FINISHED, HandshakeType.FINISHED)] = _finished_handler
