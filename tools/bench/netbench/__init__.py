"""netbench: the network benchmark harness behind ``tools/bench/run``.

Pure parts (``parse``, ``stats``, ``report``) take text and numbers and
return values; the rest (``lab``, ``systems``, ``runner``) drives network
namespaces, daemons and traffic tools.
"""
