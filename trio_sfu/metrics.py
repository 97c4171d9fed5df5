"""Named counters for everything the server drops, refuses or survives, and the forwarding
latency histogram.

A counter is cheap (a dict slot), so every error path bumps one; tests and the Prometheus
endpoint (trio_sfu.api.prometheus) read them through `snapshot()`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Mapping, Sequence

import attrs

#: Upper bounds (seconds) of the forwarding latency histogram's buckets: from a fan-out to a
#: subscriber or two (~0.1 ms) to a starved event loop (a quarter of a second and more).
FORWARD_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
#: One packet in this many (per published track) has its forwarding latency measured: reading
#: the clock costs more than the rest of the bookkeeping of a packet, so most are not timed.
FORWARD_LATENCY_SAMPLE_EVERY = 64


class Histogram:
    """Observations counted into fixed buckets (each observation in exactly one), with their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, ending with (+inf, count)."""
        running, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            out.append((bound, running))
        return out


class Metrics:
    """A registry of monotonically increasing named counters, and the forwarding latency."""

    def __init__(self) -> None:
        self._counters: Counter[str] = Counter()
        # Seconds from a media datagram's arrival to the end of its fan-out to every subscriber,
        # for one packet in FORWARD_LATENCY_SAMPLE_EVERY (trio_sfu.media.publishing).
        self.forward_latency = Histogram(FORWARD_LATENCY_BUCKETS)

    def inc(self, name: str, amount: int = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self._counters[name] += amount

    def get(self, name: str) -> int:
        return self._counters.get(name, 0)

    def snapshot(self) -> Mapping[str, int]:
        return dict(self._counters)


# Counter names in one place so a typo is an AttributeError, not a silent new counter.
# 1 when this process forwards with the compiled fan-out (trio_sfu.native), absent with the pure path.
FORWARDING_FAST_PATH = "forwarding_fast_path"
# Forwarded packets the compiled fan-out sent (told when a down track takes its state back).
FORWARDING_COMPILED_PACKETS = "forwarding_compiled_packets_total"
HTTP_REQUESTS = "http_requests_total"
HTTP_BAD_REQUEST = "http_bad_request_total"
HTTP_TIMEOUT = "http_read_timeout_total"
HTTP_INTERNAL_ERROR = "http_internal_error_total"
HTTP_ACCEPT_RESOURCE_ERROR = "http_accept_resource_error_total"
# Connections refused on arrival: the server's total cap, or the per-client-address cap.
HTTP_REFUSED_TOTAL_CAP = "http_refused_total_cap_total"
HTTP_REFUSED_PER_IP_CAP = "http_refused_per_ip_cap_total"
# Requests after the first on one connection (pipelined or kept alive) that were answered.
HTTP_PIPELINED = "http_pipelined_total"
AUTH_FAILED = "auth_failed_total"
# Requests on the signalling paths: `/rtc` and `/rtc/validate` (two peer connections), `/rtc/v1`
# and `/rtc/v1/validate` (one), and v1 joins refused for an unusable `join_request`.
HTTP_RTC_V0_REQUESTS = "http_rtc_v0_requests_total"
HTTP_RTC_V1_REQUESTS = "http_rtc_v1_requests_total"
SIGNAL_JOIN_REQUEST_INVALID = "signal_join_request_invalid_total"
SIGNAL_JOINS = "signal_joins_total"
SIGNAL_MALFORMED = "signal_malformed_total"
SIGNAL_TEXT_FRAME = "signal_text_frame_total"
SIGNAL_UNKNOWN_MESSAGE = "signal_unknown_message_total"
SIGNAL_OVERSIZE = "signal_oversize_total"
SIGNAL_SEND_OVERFLOW = "signal_send_overflow_total"
SIGNAL_PING_TIMEOUT = "signal_ping_timeout_total"
SIGNAL_REQUEST_DENIED = "signal_request_denied_total"
SIGNAL_RESUME_REFUSED = "signal_resume_refused_total"
SIGNAL_RESUME_FORWARDED = "signal_resume_forwarded_total"
# Same-node resume: signal connections lost with the media still up (the participant waits for
# a resume), resumes that rebound a participant, resumes that replaced a newer pending or live
# one (racing resumes: the last wins), and participants whose resume window passed.
SIGNAL_CONNECTION_LOST = "signal_connection_lost_total"
SIGNAL_RESUMED = "signal_resumed_total"
SIGNAL_RESUME_SUPERSEDED = "signal_resume_superseded_total"
SIGNAL_RESUME_EXPIRED = "signal_resume_expired_total"
# SyncState after a resume naming a published track the server does not have: full reconnect.
SIGNAL_SYNC_STATE_MISMATCH = "signal_sync_state_mismatch_total"
# Cluster placement: joins spliced to another node, joins no node could take.
SIGNAL_JOIN_FORWARDED = "signal_join_forwarded_total"
SIGNAL_NO_NODE = "signal_no_node_total"
SIGNAL_DUPLICATE_IDENTITY = "signal_duplicate_identity_total"
SIGNAL_HANDSHAKE_FAILED = "signal_handshake_failed_total"
SIGNAL_ROOM_FULL = "signal_room_full_total"
SIGNAL_SESSION_CRASHED = "signal_session_crashed_total"
# A request refused by a signal limit (sizes, counts: trio_sfu.signal.limits).
SIGNAL_LIMIT_EXCEEDED = "signal_limit_exceeded_total"
# A request dropped by its kind's rate limit, and sessions ended for flooding.
SIGNAL_RATE_LIMITED = "signal_rate_limited_total"
SIGNAL_RATE_LIMIT_DISCONNECT = "signal_rate_limit_disconnect_total"
# Subscriptions/track settings for tracks not in the room, forgotten past the allowance.
SIGNAL_PENDING_TRACK_IDS_FORGOTTEN = "signal_pending_track_ids_forgotten_total"
ROOMS_CREATED = "rooms_created_total"
ROOMS_CLOSED = "rooms_closed_total"

# The media layer (trio_sfu.media); the UDP mux and data channels name their own next to them.
MEDIA_SDP_REJECTED = "media_sdp_rejected_total"
MEDIA_RTP_UNMATCHED = "media_rtp_unmatched_total"
MEDIA_RTP_DROPPED = "media_rtp_dropped_by_receiver_total"
MEDIA_RTP_SSRC_OVER_CAP = "media_rtp_ssrc_over_cap_total"  # a new SSRC past a track's cap
MEDIA_RTCP_MALFORMED = "media_rtcp_malformed_total"
MEDIA_TRANSPORT_CONNECTED = "media_transport_connected_total"
MEDIA_TRANSPORT_FAILED = "media_transport_failed_total"
# ICE restarts on a live PC (a resume, a client's network change), and those the client
# completed (a check under the new credentials arrived).
MEDIA_ICE_RESTARTS = "media_ice_restarts_total"
MEDIA_ICE_RESTARTS_COMPLETED = "media_ice_restarts_completed_total"
MEDIA_TRICKLE_MALFORMED = "media_trickle_malformed_total"
MEDIA_ANSWER_UNEXPECTED = "media_subscriber_answer_unexpected_total"
MEDIA_ANSWER_TIMEOUT = "media_subscriber_answer_timeout_total"
# subscribed_quality_update messages sent to publishers (dynacast).
MEDIA_DYNACAST_UPDATES = "media_dynacast_updates_total"
# stream_state_update entries sent to subscribers (the allocator paused or resumed a track).
MEDIA_STREAM_STATE_UPDATES = "media_stream_state_updates_total"
MEDIA_SUBSCRIPTION_FAILED = "media_subscription_failed_total"
MEDIA_TRACKS_PUBLISHED = "media_tracks_published_total"
MEDIA_AUDIO_LEVEL_MALFORMED = "media_audio_level_malformed_total"  # a bad RFC 8285 block on an audio packet
MEDIA_SPEAKER_UPDATES_SENT = "media_speaker_updates_sent_total"  # speakers_changed messages
MEDIA_QUALITY_UPDATES_SENT = "media_connection_quality_updates_sent_total"  # connection_quality messages
# Downstream congestion control (trio_sfu.media.bandwidth): transport-cc feedback from
# subscribers matched to what we sent, what could not be parsed, what named packets we do not
# know, and the probes sent. The estimates themselves are per participant: never a label.
MEDIA_TWCC_FEEDBACK = "media_twcc_feedback_total"
MEDIA_TWCC_FEEDBACK_MALFORMED = "media_twcc_feedback_malformed_total"
MEDIA_TWCC_FEEDBACK_UNMATCHED = "media_twcc_feedback_unmatched_packets_total"
MEDIA_BWE_PROBE_CLUSTERS = "media_bwe_probe_clusters_total"
MEDIA_BWE_PROBE_PACKETS = "media_bwe_probe_packets_total"
# Subscriber estimates given to the stream allocator, and lower ones it did not take because a
# probe was in flight (its padding queues at the bottleneck on purpose).
MEDIA_BWE_ESTIMATES_APPLIED = "media_bwe_estimates_applied_total"
MEDIA_BWE_ESTIMATES_HELD_IN_PROBE = "media_bwe_estimates_held_in_probe_total"
# Packets sent to a subscriber without our transport-wide seq (no room for the element).
MEDIA_TWCC_UNSTAMPABLE = "media_twcc_unstampable_total"
# Subscribers' jitter-buffer floors (trio_sfu.forwarding.playout_delay) raised for loss, lifted
# once it went away.
MEDIA_PLAYOUT_DELAY_RAISED = "media_playout_delay_raised_total"
MEDIA_PLAYOUT_DELAY_LIFTED = "media_playout_delay_lifted_total"


# Agent workers (trio_sfu.agents): registrations, the /agent protocol's refusals, and jobs.
AGENT_AUTH_REFUSED = "agent_auth_refused_total"
AGENT_HANDSHAKE_FAILED = "agent_handshake_failed_total"
AGENT_WORKERS_REGISTERED = "agent_workers_registered_total"
AGENT_WORKERS_DEREGISTERED = "agent_workers_deregistered_total"
AGENT_WORKERS_REFUSED = "agent_workers_refused_total"
AGENT_PROTOCOL_VIOLATIONS = "agent_protocol_violations_total"
AGENT_MESSAGE_TOO_LARGE = "agent_message_too_large_total"
AGENT_RATE_LIMITED = "agent_rate_limited_total"
AGENT_UNKNOWN_AVAILABILITY = "agent_unknown_availability_total"
AGENT_UNKNOWN_JOB_UPDATES = "agent_unknown_job_updates_total"
AGENT_IGNORED_MESSAGES = "agent_ignored_messages_total"
AGENT_JOBS_ASSIGNED = "agent_jobs_assigned_total"
AGENT_JOBS_SUCCEEDED = "agent_jobs_succeeded_total"
AGENT_JOBS_FAILED = "agent_jobs_failed_total"
AGENT_JOBS_DROPPED = "agent_jobs_dropped_total"
AGENT_JOBS_REDISPATCHED = "agent_jobs_redispatched_total"
AGENT_JOB_OFFERS_RETRIED = "agent_job_offers_retried_total"


def fold_counters(metrics: Metrics, prefix: str, counters: object) -> None:
    """Add a finished object's counters (an attrs class of ints) to the server's metrics, so
    drops counted per transport, receiver or down track outlive it as `<prefix>_<name>_total`."""
    for name, value in attrs.asdict(counters).items():  # type: ignore[arg-type]
        if isinstance(value, int) and value > 0:
            metrics.inc(f"{prefix}_{name}_total", value)
