"""The live demo: agents on the real protocol, a page at localhost:8000 (`sagemem demo`)."""
