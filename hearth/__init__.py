"""hearth: disposable browser desktops streamed over one authenticated WebSocket."""

__version__ = "0.1.0"
