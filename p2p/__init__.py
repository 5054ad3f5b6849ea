"""The overlay and everything every other package shares about bytes and keys.

Modules (pure unless marked):
- ``errors``   the SuanliError tree (pure)
- ``codec``    canonical msgpack: one byte string per value, strict bounded decoding (pure)
- ``records``  frozen-dataclass records with a type tag and a version, encoded by ``codec`` (pure)
- ``envelope`` signatures over ``domain || canonical bytes``, verified on the bytes that arrived (pure)
- ``identity`` Ed25519 key files and libp2p peer ids, without importing libp2p (file IO only)

The py-libp2p host, framed streams, DHT and gossip live here too (added by the overlay work); those
modules import libp2p, and nothing that offline commands use may import them.
"""
