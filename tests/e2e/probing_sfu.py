"""trio-sfu's command line with a stand-in for the stream allocator (issue 15's other part): as
soon as a subscriber's downstream estimate exists it is asked to probe up to
$TRIO_SFU_TEST_PROBE_BPS, as the allocator will when the tracks it would send need more than
the estimate. Everything else is the shipped server; the e2e test then sees what probing does
against a real libwebrtc receiver (tests/e2e/test_e2e_bwe_sdk.py).
"""

from __future__ import annotations

import os
import sys

import trio

from trio_sfu import cli
from trio_sfu.media.subscribing import SubscriberMedia

PROBE_BPS = int(os.environ.get("TRIO_SFU_TEST_PROBE_BPS", "3000000"))
_start = SubscriberMedia.start_bandwidth_estimation


def _start_and_probe(self, answer):  # type: ignore[no-untyped-def]
    bandwidth = _start(self, answer)
    if bandwidth is not None:
        bandwidth.request_probe(PROBE_BPS, trio.current_time())
    return bandwidth


SubscriberMedia.start_bandwidth_estimation = _start_and_probe  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main())
