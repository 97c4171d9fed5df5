"""trio_sfu.media.data_channels without a network: LiveKit's forwarding rules on any bytes a client can
put on a channel, and the per-recipient bounds on an association that is not draining (a real
PeerSession's, whose peer never connected, so everything stays queued — the worst slow receiver)."""

from __future__ import annotations

import pytest
from budgets import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import models

import trio_sfu.media.data_channels as dc
from dtls_helpers import make_certificate
from rtp.dtls import DtlsRole
from rtp.peer_session import PeerSession
from rtp.peer_transport import IceMode, PeerTransport
from rtp.sctp import SctpAssociation
from trio_sfu import metrics as m

CERT = make_certificate()


class Recorder:
    """A recipient that keeps what it is sent."""

    def __init__(self, identity: str, sid: str) -> None:
        self.identity = identity
        self.sid = sid
        self.closed = False
        self.got: list[tuple[dc.DataKind, bytes]] = []

    def send(self, kind: dc.DataKind, payload: bytes, now: float) -> bool:
        self.got.append((kind, payload))
        return True


def sender_and_room(may_publish: bool = True) -> tuple[dc.ParticipantData, Recorder, Recorder, m.Metrics]:
    metrics = m.Metrics()
    bob, carol = Recorder("bob", "PA_bob"), Recorder("carol", "PA_carol")
    sender = dc.ParticipantData(sid="PA_alice", identity="alice", may_publish_data=lambda: may_publish,
                                peers=lambda: [sender, bob, carol], metrics=metrics)  # type: ignore[list-item]
    return sender, bob, carol, metrics


@settings(max_examples=examples(3), deadline=None)
@given(st.binary(max_size=300), st.sampled_from(list(dc.DataKind)))
def test_any_bytes_on_a_channel_are_forwarded_or_counted_never_raise(data: bytes, kind: dc.DataKind) -> None:
    sender, bob, carol, metrics = sender_and_room()
    sender.on_client_packet(kind, data, 0.0)
    assert metrics.get(dc.DATA_RECEIVED) == 1
    counted = metrics.get(dc.DATA_MALFORMED) + metrics.get(dc.DATA_UNSUPPORTED)
    if counted:
        assert counted == 1 and not bob.got and not carol.got
        return
    packet = models.DataPacket.FromString(data)
    for who in (bob, carol):
        for got_kind, payload in who.got:
            out = models.DataPacket.FromString(payload)
            assert got_kind is kind and out.kind == kind
            assert (out.participant_identity, out.participant_sid) == ("alice", "PA_alice")
            assert out.WhichOneof("value") == packet.WhichOneof("value")


identities = st.lists(st.sampled_from(["bob", "carol", "dave", "alice"]), max_size=3, unique=True)


@st.composite
def client_packets(draw) -> models.DataPacket:
    value = draw(st.sampled_from(["user", "chat", "rpc", "chunk"]))
    packet = models.DataPacket(
        participant_identity=draw(st.sampled_from(["", "bob", "mallory"])),
        participant_sid=draw(st.sampled_from(["", "PA_bob"])),
        destination_identities=draw(identities),
        sequence=draw(st.integers(0, 2**32 - 1)),
    )
    if value == "user":
        packet.user.CopyFrom(models.UserPacket(payload=draw(st.binary(max_size=64)), topic=draw(st.text(max_size=8)),
                                               participant_identity="carol"))
    elif value == "chat":
        packet.chat_message.CopyFrom(models.ChatMessage(id="c1", message=draw(st.text(max_size=20)),
                                                        timestamp=draw(st.integers(0, 2**62))))
    elif value == "rpc":
        packet.rpc_request.CopyFrom(models.RpcRequest(id="r", method=draw(st.text(max_size=8)),
                                                      payload=draw(st.text(max_size=20)), version=1))
    else:
        packet.stream_chunk.CopyFrom(models.DataStream.Chunk(stream_id="s", chunk_index=draw(st.integers(0, 99)),
                                                             content=draw(st.binary(max_size=64))))
    return packet


@settings(max_examples=examples(3), deadline=None)
@given(client_packets(), st.sampled_from(list(dc.DataKind)))
def test_forwarded_packet_is_the_sent_one_with_the_server_set_sender(packet: models.DataPacket,
                                                                    kind: dc.DataKind) -> None:
    sender, bob, carol, metrics = sender_and_room()
    sender.on_client_packet(kind, packet.SerializeToString(), 0.0)
    expected = models.DataPacket()
    expected.CopyFrom(packet)
    expected.participant_identity, expected.participant_sid, expected.kind = "alice", "PA_alice", kind
    if expected.WhichOneof("value") == "user":
        expected.user.participant_identity, expected.user.participant_sid = "alice", "PA_alice"
    named = set(packet.destination_identities)
    for who in (bob, carol):
        wanted = not named or who.identity in named
        assert [(k, models.DataPacket.FromString(p)) for k, p in who.got] == ([(kind, expected)] if wanted else [])
    assert metrics.get(dc.DATA_FORWARDED) == sum(len(w.got) for w in (bob, carol))


def test_without_can_publish_data_nothing_is_forwarded() -> None:
    sender, bob, carol, metrics = sender_and_room(may_publish=False)
    sender.on_client_packet(dc.DataKind.RELIABLE, models.DataPacket(user=models.UserPacket(payload=b"x")).SerializeToString(), 0.0)
    assert not bob.got and not carol.got and metrics.get(dc.DATA_DENIED) == 1


def unconnected_association() -> SctpAssociation:
    """A subscriber PC's association as the server has it before (here: without) its peer ever
    connecting: the real session's, so everything queued on it stays queued."""
    session = PeerSession(PeerTransport(IceMode.LITE, DtlsRole.SERVER, local_ufrag="srvU", local_pwd="p" * 22,
                                        certificate=CERT, remote_ufrag="cliU", remote_pwd="q" * 22,
                                        remote_fingerprints=[("sha-256", CERT.fingerprint())]))
    session.start(0.0)
    return session.enable_data_channels(0.0)


def stalled_recipient(reliable_limit: int, lossy_limit: int) -> tuple[dc.ParticipantData, m.Metrics]:
    metrics = m.Metrics()
    data = dc.ParticipantData(sid="PA_r", identity="r", may_publish_data=lambda: True, peers=lambda: [],
                              metrics=metrics, reliable_limit=reliable_limit, lossy_limit=lossy_limit)
    data.attach("subscriber", unconnected_association(), flush=lambda now: None, downlink=True)
    return data, metrics


def test_lossy_past_the_bound_is_dropped_and_counted_reliable_unaffected() -> None:
    data, metrics = stalled_recipient(reliable_limit=1 << 20, lossy_limit=10_000)
    sent = [data.send(dc.DataKind.LOSSY, bytes(1000), 0.0) for _ in range(30)]
    # The three DATA_CHANNEL_OPENs wait in the same queue, so 9 of 1000 bytes fit under 10 000.
    assert sent == [True] * 9 + [False] * 21
    assert metrics.get(dc.DATA_LOSSY_DROPPED) == sent.count(False)
    assert data.send(dc.DataKind.RELIABLE, bytes(1000), 0.0)
    assert data.downlink is not None and dc.DataKind.RELIABLE in data.downlink.out_channels


def test_reliable_past_the_bound_closes_only_that_channel() -> None:
    data, metrics = stalled_recipient(reliable_limit=20_000, lossy_limit=1 << 20)
    sent = [data.send(dc.DataKind.RELIABLE, bytes(1000), 0.0) for _ in range(40)]
    first_refused = sent.index(False)
    assert first_refused == 19 and not any(sent[first_refused:])
    assert metrics.get(dc.DATA_RELIABLE_CLOSED) == 1
    assert metrics.get(dc.DATA_RELIABLE_DROPPED) == 40 - first_refused
    downlink = data.downlink
    assert downlink is not None and dc.DataKind.RELIABLE not in downlink.out_channels
    # The lossy channel stays (its own bound, 1 MiB here, is not reached).
    assert data.send(dc.DataKind.LOSSY, b"still here", 0.0)


def test_before_the_subscriber_pc_packets_wait_bounded_then_flow() -> None:
    metrics = m.Metrics()
    data = dc.ParticipantData(sid="PA_r", identity="r", may_publish_data=lambda: True, peers=lambda: [],
                              metrics=metrics)
    results = [data.send(dc.DataKind.RELIABLE, b"%d" % i, 0.0) for i in range(dc.MAX_PENDING_MESSAGES + 3)]
    assert results.count(False) == 3 == metrics.get(dc.DATA_PENDING_DROPPED)
    flushed: list[float] = []
    transport = data.attach("subscriber", unconnected_association(), flush=flushed.append, downlink=True)
    # Queued in the association behind the channel opens, waiting for SCTP to come up.
    assert transport.association.buffered_amount >= sum(len(b"%d" % i) for i in range(dc.MAX_PENDING_MESSAGES))
    # Once attached, what is sent to the participant is handed to the session to go out.
    assert data.send(dc.DataKind.RELIABLE, b"after", 1.0) and flushed == [1.0]


@pytest.mark.parametrize("sdp_size,expected", [(None, dc.DEFAULT_REMOTE_MAX_MESSAGE_SIZE), (0, 0), (1024, 1024)])
def test_remote_sctp_params_from_sdp(sdp_size, expected) -> None:
    from sdp.parser import parse

    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0",
             "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sctp-port:5001"]
    if sdp_size is not None:
        lines.append(f"a=max-message-size:{sdp_size}")
    assert dc.remote_sctp_params(parse("\r\n".join(lines) + "\r\n")) == (True, 5001, expected)
    audio_only = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                  "c=IN IP4 0.0.0.0", "a=mid:0", "a=rtpmap:111 opus/48000/2"]
    assert dc.remote_sctp_params(parse("\r\n".join(audio_only) + "\r\n"))[0] is False
