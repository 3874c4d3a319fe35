"""The one sandbox lifecycle: a `Sandbox` object per sandbox and the `SandboxManager` that boots, adopts and ends
them — for browser sessions and CLI sandboxes alike."""
