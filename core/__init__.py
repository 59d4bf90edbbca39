"""lookout: watch LLM applications in production."""

# The one place the version lives: pyproject.toml reads it for the lookout-llm distribution.
__version__ = "0.1.0"
