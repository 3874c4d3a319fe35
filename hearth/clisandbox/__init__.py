"""The user's persistent CLI sandbox, where delivered credentials are installed (through its agent)."""
