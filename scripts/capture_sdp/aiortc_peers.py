"""aiortc as the server-side WebRTC peer of the fake LiveKit signal server.

aiortc is asyncio-only while the signal server runs on Trio, so every aiortc
PeerConnection lives on one asyncio loop in a background thread.  Trio code calls
the blocking methods of `AiortcPeers` from `trio.to_thread.run_sync`.

The capture only needs SDP, but the `livekit` Python SDK will not publish until
its subscriber PeerConnection is really connected, so these peers do take part in
ICE/DTLS with whatever trickle candidates the client sends.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

# Long enough for aiortc's host-only gathering and a DTLS handshake, short
# enough that a wedged peer cannot hang a capture run.
CALL_TIMEOUT_S = 20.0


def restrict_ice_addresses(addresses: list[str]) -> None:
    """Make aioice gather host candidates only on `addresses`.

    Without this aioice would advertise every interface of the machine, and the
    client would then send ICE checks to addresses outside the test's sandbox.
    """
    fixed = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def without_candidates(sdp: str) -> str:
    return "".join(line for line in sdp.splitlines(keepends=True) if not line.startswith("a=candidate:"))


class AiortcPeers:
    """A registry of aiortc PeerConnections, each keyed by a caller-chosen name.

    With `connect=False` no ICE can start: candidates are stripped from the SDP
    this side produces and the client's trickle is dropped.  That is the mode for
    runs outside a private network namespace, where the client's candidates are
    the machine's real interfaces, which test traffic must never target.
    """

    def __init__(self, connect: bool = True) -> None:
        self._connect = connect
        self._loop = asyncio.new_event_loop()
        self._pcs: dict[str, RTCPeerConnection] = {}
        self._thread = threading.Thread(target=self._loop.run_forever, name="aiortc", daemon=True)
        self._thread.start()

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_S)

    # -- subscriber PC: the server offers ------------------------------------------

    def make_subscriber_offer(self, key: str) -> str:
        """Offer sendonly audio + video + LiveKit's two server-side data channels."""
        return self._call(self._make_subscriber_offer(key))

    async def _make_subscriber_offer(self, key: str) -> str:
        # iceServers=[] stops aiortc from falling back to its public default STUN server.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pcs[key] = pc
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        pc.createDataChannel("_reliable", ordered=True)
        pc.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
        await pc.setLocalDescription(await pc.createOffer())
        return self._outgoing(pc.localDescription.sdp)

    def _outgoing(self, sdp: str) -> str:
        return sdp if self._connect else without_candidates(sdp)

    def accept_answer(self, key: str, sdp: str) -> None:
        self._call(self._set_remote(key, sdp, "answer"))

    async def _set_remote(self, key: str, sdp: str, kind: str) -> None:
        await self._pcs[key].setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))

    # -- publisher PC: the client offers -------------------------------------------

    def answer_offer(self, key: str, sdp: str) -> str:
        """Answer a client offer (aiortc ignores rid/simulcast lines it does not know)."""
        return self._call(self._answer_offer(key, sdp))

    async def _answer_offer(self, key: str, sdp: str) -> str:
        pc = self._pcs.get(key)
        if pc is None:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            self._pcs[key] = pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return self._outgoing(pc.localDescription.sdp)

    # -- both ----------------------------------------------------------------------

    def add_trickle(self, key: str, candidate_init_json: str) -> None:
        """Feed a LiveKit TrickleRequest.candidateInit (JSON RTCIceCandidateInit)."""
        self._call(self._add_trickle(key, candidate_init_json))

    async def _add_trickle(self, key: str, candidate_init_json: str) -> None:
        pc = self._pcs.get(key)
        init = json.loads(candidate_init_json)
        line = init.get("candidate") or ""
        if pc is None or not line or not self._connect:
            return
        candidate = candidate_from_sdp(line.split(":", 1)[1] if line.startswith("candidate:") else line)
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        await pc.addIceCandidate(candidate)

    def close(self) -> None:
        async def close_all() -> None:
            for pc in list(self._pcs.values()):
                await pc.close()
            self._pcs.clear()
            # aiortc leaves connect tasks behind on close; cancel them so that
            # stopping the loop does not report destroyed pending tasks.
            leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

        try:
            self._call(close_all())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()
