"""Settlement: receipts, their chains, the offline audit and statements (docs/PROTOCOL.md §4-§6b).

Pure (no IO):
- ``records``: Receipt, Statement and StatementEntry.
- ``billing``: the price rule and the physical bounds on usage (Rules 1-4).
- ``rules``: the per-receipt chain rules (``ChainChecker``), used live by the buyer and by the audit.
- ``chain``: ``verify_chain``: admission, order, the whole-chain rules and what is owed (one rule).
- ``session``: the live receipt loop (issuer, exposure guard, buyer's verifier).
- ``statement``: statements from audited chains; ``net_balances``.
- ``testing``: honest evidence for tests and benchmarks; the protocol's test vectors.
Shells:
- ``store`` (the only sqlite import) and ``astore`` (its trio wrapper).
- ``bundle``: the export format; ``dbread``: a node database read by its signed bodies.
- ``audit``: inputs to per-agreement jobs, over processes; ``verify_statement``: a statement against
  the audit of its evidence.
"""
