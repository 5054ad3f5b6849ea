"""Export bundles: one self-contained file of evidence (offer, proposal, agreement, receipts).

Wire form (docs/PROTOCOL.md, "Bundle"): the canonical msgpack map

    {"chains": [{"agreement": env, "offer": env | nil, "proposal": env | nil, "receipts": [env, ...]}, ...],
     "t": "bundle", "v": 1}

where every ``env`` is a signed envelope ``{"body": bin, "sigs": [bin, ...]}`` exactly as stored.
Rule 1: a bundle holds nothing that is not signed except this structure itself, so that changing any
byte either breaks the structure (the file is refused) or changes a signed body or signature (the
audit reports it).
"""

from __future__ import annotations

from typing import Any

from p2p.codec import pack, preview, unpack_canonical
from p2p.errors import CodecError, UnusableInputError
from settlement.store import StoredChain

BUNDLE_TAG = "bundle"
BUNDLE_VERSION = 1
MAX_BUNDLE_BYTES = 1 << 30
_CHAIN_KEYS = ["agreement", "offer", "proposal", "receipts"]  # canonical (sorted) order


def encode_bundle(chains: list[StoredChain]) -> bytes:
    return pack({
        "t": BUNDLE_TAG, "v": BUNDLE_VERSION,
        "chains": [{"agreement": c.agreement, "offer": c.offer, "proposal": c.proposal, "receipts": c.receipts}
                   for c in chains],
    })


def _is_envelope(obj: Any) -> bool:
    """The shape of a signed envelope: what the records' decoders check after is theirs (H1: the audit
    hashes ``body`` before decoding it, so a body that is not bytes must stop here)."""
    return type(obj) is dict and list(obj) == ["body", "sigs"] and type(obj["body"]) is bytes \
        and type(obj["sigs"]) is list


def decode_bundle(data: bytes, name: str = "<bundle>") -> list[StoredChain]:
    """The chains of a bundle; UnusableInputError when the file is not a well-formed bundle."""
    try:
        # Byte-exact canonical check here; key order and types are checked below and by the records.
        obj = unpack_canonical(data, MAX_BUNDLE_BYTES)
    except CodecError as exc:
        raise UnusableInputError(f"{name}: not a Suanli bundle ({exc})", path=name) from exc
    if type(obj) is not dict or list(obj) != ["chains", "t", "v"] or obj["t"] != BUNDLE_TAG:
        raise UnusableInputError(f"{name}: not a Suanli bundle", path=name)
    if type(obj["v"]) is not int or obj["v"] != BUNDLE_VERSION:  # true == 1.0 == 1 in Python
        raise UnusableInputError(f"{name}: bundle version {preview(obj['v'], 20)} is not supported "
                                 f"(this build reads {BUNDLE_VERSION})", path=name)
    if type(obj["chains"]) is not list:
        raise UnusableInputError(f"{name}: malformed bundle (chains)", path=name)
    chains = []
    for i, chain in enumerate(obj["chains"]):
        if (type(chain) is not dict or list(chain) != _CHAIN_KEYS or not _is_envelope(chain["agreement"])
                or type(chain["receipts"]) is not list
                or not all(_is_envelope(e) for e in chain["receipts"])
                or not all(chain[k] is None or _is_envelope(chain[k]) for k in ("offer", "proposal"))):
            raise UnusableInputError(f"{name}: malformed bundle (chain {i})", path=name)
        chains.append(StoredChain(agreement=chain["agreement"], offer=chain["offer"], proposal=chain["proposal"],
                                  receipts=chain["receipts"]))
    return chains
