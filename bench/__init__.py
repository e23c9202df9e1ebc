"""jitgate benchmark harness (``make bench``); not part of the importable product."""
