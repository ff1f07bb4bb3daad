"""tokenadmin: token administration for enterprise AI platforms."""

__version__ = "0.1.0"
