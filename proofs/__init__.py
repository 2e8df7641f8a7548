"""Model checkers for the coherence protocol in `spec/` (networkx exploration, Z3, mutants).

These modules import the specification (`sagemem.spec`, which is the top-level `spec/` folder)
and never the production modules of `sagemem`.
"""

if __name__ != "sagemem.proofs":
    # Imported as the top-level `proofs` (a clone): become `sagemem.proofs`, the package the
    # wheel ships (`pip install "sagemem[check]"`), so each checker class exists once.
    from sagemem.spec._alias import alias_package

    alias_package(__name__, "sagemem.proofs")
