"""Webhooks: session and credential state changes, from an outbox in the store, signed (Standard Webhooks)."""
