"""Prompts through the person's own signed-in CLI, in their CLI sandbox, streamed back (issue 23; docs/prompts.md)."""
