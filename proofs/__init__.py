"""Model checkers for the coherence protocol in `spec/` (networkx exploration, Z3, mutants).

These modules import the specification (`sagemem.spec`, which is the top-level `spec/` folder)
and never the production modules of `sagemem`.
"""
