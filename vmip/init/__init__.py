"""``vmip init``: a complete, coherent network of node configs from one short description.

:mod:`vmip.init.network` parses and allocates the description,
:mod:`vmip.init.configs` builds each node's config, :mod:`vmip.init.pki`
makes the CA and certificates, :mod:`vmip.init.generate` writes it all
(docs/init.md).
"""
