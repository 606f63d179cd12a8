"""Self-hosted telemedicine server: the core (config, storage, accounts, audit, web, CLI)."""

__version__ = "0.1.0"
