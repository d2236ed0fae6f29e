"""vmip.lab: the network-namespace lab (docs/design.md §10, docs/lab.md).

- :mod:`vmip.lab.topology`  the addressing plan as data, and the ``--json`` document
- :mod:`vmip.lab.manage`    ``lab_up``, ``lab_down``, ``lab_status``, ``set_link_state``,
  ``shape_link``
- :mod:`vmip.lab.netns`     named namespaces: create, enter, run commands in, empty
- :mod:`vmip.lab.configs`   one config per node (TOML) and its static keys, written by ``lab up``
- :mod:`vmip.lab.runner`    ``vmip run`` in each namespace: start, stop, logs, pcaps
- :mod:`vmip.lab.nat`       the router's nftables NAT for the lte links
- :mod:`vmip.lab.emulation` delay, jitter, loss and rate without netem (NFQUEUE)

Importing this package is cheap: pyroute2 is loaded by the modules that need it.
"""
