"""Tools, not production: the providers' network stand-ins (standin, internet with its DNS, pages and proxy; the
model-API stand-in) and the conformance and end-to-end checks that run the real CLIs and a real controller against
them. The top layer (with hearth.cli): production code never imports it."""
