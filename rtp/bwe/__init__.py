"""Send-side bandwidth estimation (GCC-style), sans-IO: transport-cc feedback and `now` in, an
estimate and probe requests out.

- `delay_based`: packet groups' delay variation -> trendline slope -> over/under-use -> AIMD rate;
- `loss_based`: the reported loss fraction -> back off on high loss, grow on low loss;
- `probe`: probe clusters at a multiple of the estimate, judged by their arrival rate;
- `estimator`: the three combined per subscriber transport, plus REMB for clients that send only that.
"""

from rtp.bwe.estimator import BandwidthEstimator, EstimatorCounters
from rtp.bwe.probe import ProbeCluster

__all__ = ["BandwidthEstimator", "EstimatorCounters", "ProbeCluster"]
