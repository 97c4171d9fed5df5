"""A participant's media side, whichever server it talks to: the base of our LiveKit client
(client.py) and of the Janus adapter (janus.py), which signal differently but set up media the
same way.

Each has a :class:`~trio_sfu.client.publisher.Publisher` and a
:class:`~trio_sfu.client.subscriber.Subscriber`; the PCs they open run in the participant's
nursery and report their failure to its error list; one task sends the RTCP reports of both
(:meth:`ClientMedia._rtcp_loop`, started by the participant's ``connect``). What the load
tester and the tests read about media (publications, subscriptions, the PCs) is read here.
"""

from __future__ import annotations

import trio

from rtp.dtls import DtlsCertificate

from trio_sfu.client.peer_connection import ClientPeerConnection, PacketHandler
from trio_sfu.client.publisher import LocalPublication, Publisher
from trio_sfu.client.subscriber import RemoteTrack, Subscriber
from trio_sfu.client.wallclock import ntp_now
from trio_sfu.datagram import BindDatagram, UdpSocket

#: How often each PC sends its RTCP reports (SRs on the publisher PC, RRs on the subscriber PC).
RTCP_INTERVAL = 1.0


class ClientMedia:
    """The media half of a participant (see the module docstring). A subclass sets the
    attributes below in its constructor, and ``_nursery`` once it runs."""

    publisher: Publisher
    subscriber: Subscriber
    bind_host: str
    errors: list[str]
    _certificate: DtlsCertificate
    _nursery: trio.Nursery | None
    _bind_datagram: BindDatagram = UdpSocket.bind

    def _error(self, message: str) -> None:
        self.errors.append(message)

    def _open_pc(self, name: str, on_rtp: PacketHandler, on_rtcp: PacketHandler) -> ClientPeerConnection:
        """A PC of this participant: its loop runs in the participant's nursery, its failure is reported."""
        pc = ClientPeerConnection(name, self.bind_host, self._certificate, on_rtp, on_rtcp,
                                  lambda reason: self._error(f"{name} PC failed: {reason}"), self._bind_datagram)
        assert self._nursery is not None, "a PC is opened only once the participant runs"
        self._nursery.start_soon(pc.run)
        return pc

    def _open_publisher_pc(self) -> ClientPeerConnection:
        return self._open_pc("publisher", self.publisher.on_rtp, self.publisher.on_rtcp)

    def _open_subscriber_pc(self) -> ClientPeerConnection:
        return self._open_pc("subscriber", self._on_subscriber_rtp, self.subscriber.on_rtcp)

    def _on_subscriber_rtp(self, packet: bytes, now: float) -> None:
        """Every RTP packet the subscriber PC decrypted (an observers' seam: tests wrap it on an
        instance or the class before the subscriber PC is opened)."""
        self.subscriber.on_rtp(packet, now)

    async def _rtcp_loop(self) -> None:
        """SRs for what we publish, RRs for what we receive, once per RTCP_INTERVAL."""
        while True:
            await trio.sleep(RTCP_INTERVAL)
            now, ntp = trio.current_time(), ntp_now()
            self.publisher.send_reports(now, ntp)
            self.subscriber.send_reports(now)

    # ------------------------------------------------------------------ what is read about media

    @property
    def publications(self) -> list[LocalPublication]:
        return self.publisher.publications

    @property
    def publisher_pc(self) -> ClientPeerConnection | None:
        return self.publisher.pc

    @property
    def subscriptions(self) -> dict[str, RemoteTrack]:
        return self.subscriber.subscriptions

    @property
    def subscriber_pc(self) -> ClientPeerConnection | None:
        return self.subscriber.pc

    @property
    def unknown_ssrc_packets(self) -> int:
        return self.subscriber.unknown_ssrc_packets

    async def wait_connected(self, timeout: float = 15.0) -> None:
        """Until the subscriber PC has ICE and DTLS up (in LiveKit's dual-PC mode the primary
        one, as livekit-client waits before reporting a room connected)."""
        await self.subscriber.wait_connected(timeout)


__all__ = ["RTCP_INTERVAL", "ClientMedia"]
