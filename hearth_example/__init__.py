"""A real, local OAuth 2.0 provider for tests and selftests (stdlib only, runs inside sandboxes too):

- `hearth_example.idp`: an authorization server (authorization code + PKCE S256) with a consent page that can
  auto-approve, so a sign-in runs end to end in Chromium without a human;
- `hearth_example.cli`: a CLI that behaves like the real ones (prints the URL, listens on a localhost callback,
  exchanges the code, writes a credentials file).
"""
