"""Credential vault: AES-256-GCM sealed records, key id per record, rotation."""
