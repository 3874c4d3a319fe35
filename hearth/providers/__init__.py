"""Sign-in providers as declarative definitions (data, not code paths), validated at load."""
