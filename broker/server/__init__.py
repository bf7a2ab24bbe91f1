"""The server: HTTP API, auth methods, the database secrets engine, target engines,
security (seal, barrier, audit) and storage.

Dependencies point one way: ``api`` -> ``auth``, ``database``, ``security`` ->
``engines``, ``storage``. The import-linter contracts in pyproject.toml enforce it.
"""
