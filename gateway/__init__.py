"""connector-gateway: spiff-arena's connector proxy, for connectors written in any language."""

__version__ = "0.1.0"

# The version comes first: the app, imported next, shows it on its status page.
from gateway.app import create_app
from gateway.settings import Settings

__all__ = ["Settings", "create_app"]
