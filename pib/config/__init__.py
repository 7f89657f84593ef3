"""Configuration: the types (pib.config.types) and the one step that loads them
from pib.toml with file:line for every value (pib.config.loader)."""
