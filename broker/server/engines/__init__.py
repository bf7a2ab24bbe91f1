"""Database plugins: one module per database behind the interface in ``base``."""
