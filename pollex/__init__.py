"""pollex: polishes English text with a local LLM and streams the result."""

__version__ = "1.0.0"
