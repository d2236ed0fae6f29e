"""``vmip demo``: the lab, traffic, handovers, a live dashboard and a report.

- :mod:`vmip.demo.metrics`: handover metrics from packet timestamps (sans-IO);
- :mod:`vmip.demo.traffic`: the probe/TCP agent run inside each namespace;
- :mod:`vmip.demo.dashboard`: collect a node's state and render it (rich);
- :mod:`vmip.demo.run`: the orchestration behind ``vmip demo`` and
  ``tools/bench/handover.py``.
"""
