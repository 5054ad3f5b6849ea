"""The overlay, and everything every other package shares about bytes and keys.

Modules that import neither libp2p nor trio (offline commands use only these):
- ``errors``      the SuanliError tree (pure)
- ``codec``       canonical msgpack: one byte string per value, strict bounded decoding (pure)
- ``records``     frozen-dataclass records with a type tag and a version, encoded by ``codec`` (pure)
- ``envelope``    signatures over ``domain || body || earlier signatures``, verified on arrived bytes (pure)
- ``identity``    Ed25519 key files and libp2p peer ids, without importing libp2p (file IO only)
- ``moves``       the one table step of the negotiation and job state machines (pure)
- ``clock``       the one place that reads the wall and monotonic clocks, in ms

The overlay on py-libp2p 0.8.1 (these import libp2p and trio):
- ``workarounds`` every py-libp2p defect we work around, named, each with a regression test
- ``host``        ``open_host``: TCP + Noise + Yamux, DHT and GossipSub started before any dial, clean close
- ``framing``     bounded length-prefixed frames; libp2p's exceptions translated here, once
- ``dht``         capability keys, provider records, routing tables that fill
- ``gossip``      the offers topic and its synchronous validator (``OfferLedger``)
- ``offer_query`` ``/suanli/offer/1.0.0`` and ``collect_offers`` (gossip + DHT + direct queries)
- ``testing``     in-process networks and leak checks for tests and benchmarks
"""
