"""Runnable demonstrations of sagemem against real servers.

Shipped in the wheel as `sagemem.demo` (`pip install "sagemem[demo]"`, then `sagemem demo`); in
a clone `python -m demo.server.main` runs the same modules under their short name.
"""

if __name__ != "sagemem.demo":
    from sagemem.spec._alias import alias_package

    alias_package(__name__, "sagemem.demo")
