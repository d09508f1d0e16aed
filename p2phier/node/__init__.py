"""The p2phier node: the daemon (:mod:`.daemon`) and its control protocol (:mod:`.controlwire`).

Importing this package is cheap: the daemon (trio, libp2p) is imported only by
whoever runs a node; the CLI's control client needs only :mod:`.controlwire`.
"""
