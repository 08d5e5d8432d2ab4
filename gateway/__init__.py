"""connector-gateway: spiff-arena's connector proxy, for connectors written in any language."""

from gateway.app import create_app
from gateway.settings import Settings

__all__ = ["Settings", "create_app"]
__version__ = "0.1.0"
