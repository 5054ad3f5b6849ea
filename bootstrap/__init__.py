"""The bootstrap node (``suanli bootstrap``): fixed identity, DHT server, offer relay.

Modules:
- ``node``  ``run_bootstrap`` (a trio service: runs until cancelled) and its ``Bootstrap`` status
  handle. Imports libp2p through ``p2p.host``; depends on ``p2p`` only.
"""
