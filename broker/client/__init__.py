"""The client side: the CLI's commands, the HTTP client, the agent, exec and connect.

It speaks to a broker over HTTP only and imports nothing of ``broker.server`` (an
import-linter contract enforces it), so it can be read and shipped on its own.
"""
