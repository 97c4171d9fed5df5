"""Which simulcast layer a subscriber should get, from its UpdateTrackSettings and the
layers the publisher announced in AddTrackRequest.

Layer indices are LiveKit's VideoQuality values: LOW=0 ↔ rid ``q``, MEDIUM=1 ↔ ``h``,
HIGH=2 ↔ ``f``. A non-simulcast track has the single layer 0.
"""

from __future__ import annotations

import enum
from typing import Optional, Sequence

import attrs


class VideoQuality(enum.IntEnum):
    LOW = 0
    MEDIUM = 1
    HIGH = 2
    OFF = 3


RID_TO_LAYER = {"q": 0, "h": 1, "f": 2}
LAYER_TO_RID = {v: k for k, v in RID_TO_LAYER.items()}


def layer_for_rid(rid: str, rids: Sequence[str] = ()) -> Optional[int]:
    """Layer of a rid: LiveKit's q/h/f names, else its position among the offered rids."""
    layer = RID_TO_LAYER.get(rid)
    if layer is not None:
        return layer
    try:
        return rids.index(rid) if isinstance(rids, (list, tuple)) else list(rids).index(rid)
    except ValueError:
        return None


@attrs.frozen
class PublishedLayer:
    """One entry of AddTrackRequest.layers / TrackInfo.layers."""

    quality: int
    width: int = 0
    height: int = 0
    bitrate: int = 0


def select_target_layer(
    layers: Sequence[PublishedLayer],
    *,
    width: int = 0,
    height: int = 0,
    quality: Optional[int] = None,
    disabled: bool = False,
) -> Optional[int]:
    """The layer index to forward, or None when the subscriber wants nothing.

    Dimensions win over ``quality`` when given (adaptive stream sends the element
    size): the smallest layer covering the requested size, compared side-by-side
    after sorting so portrait/landscape do not matter; the top layer when none
    covers it. Otherwise the best published layer at or below ``quality``
    (the lowest published if all are above). No published layers means one
    non-simulcast layer, 0.
    """
    if disabled or quality == VideoQuality.OFF:
        return None
    usable = sorted((l for l in layers if 0 <= l.quality <= VideoQuality.HIGH), key=lambda l: l.quality)
    if not usable:
        return 0
    if width > 0 or height > 0:
        want_long, want_short = max(width, height), min(width, height)
        for layer in usable:
            long_side, short_side = max(layer.width, layer.height), min(layer.width, layer.height)
            if long_side >= want_long and short_side >= want_short:
                return layer.quality
        return usable[-1].quality
    if quality is None:
        return usable[-1].quality
    at_or_below = [l.quality for l in usable if l.quality <= quality]
    return at_or_below[-1] if at_or_below else usable[0].quality
