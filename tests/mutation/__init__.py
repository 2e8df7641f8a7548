"""Production mutation sampling: run the real-server protocol tests against a mutated table."""
