"""The SFU's forwarding primitives: sync, deterministic, no trio (time comes in as ``now``).

``TrackReceiver`` (one published track) fans packets out to ``DownTrack``s (one per
subscriber); ``simulcast`` picks layers, ``codec_keyframes`` reads payload descriptors,
``rtcp_feedback`` builds the RTCP they send; ``allocator`` shares a subscriber's downlink among
its video tracks.
"""

from trio_sfu.forwarding.downtrack import DownTrack, DownTrackSnapshot, NumberedDownlink, map_payload_types
from trio_sfu.forwarding.receiver import ForwardingStateError, PacketSink, ReceiverState, TrackReceiver
from trio_sfu.forwarding.rtcp_feedback import PublisherSenderReport
from trio_sfu.forwarding.simulcast import PublishedLayer, VideoQuality, select_target_layer

__all__ = [
    "DownTrack",
    "DownTrackSnapshot",
    "ForwardingStateError",
    "NumberedDownlink",
    "PacketSink",
    "PublishedLayer",
    "PublisherSenderReport",
    "ReceiverState",
    "TrackReceiver",
    "VideoQuality",
    "map_payload_types",
    "select_target_layer",
]
