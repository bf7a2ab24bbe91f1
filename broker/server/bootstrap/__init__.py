"""Declarative configuration: the ``[declarative]`` section of the server's TOML file
declares mounts, connections, roles, static roles, ACL and password policies, auth methods
with their config and roles, and audit devices; the broker makes storage match it at every
unseal and on ``broker apply``.

Composition-level, like assembly: it writes through the domain objects the API uses
(``targets.py``), never through SQL of its own but for its record of what it applied
(``storage/declared.py``). ``config.py`` loads and checks the file, ``kinds.py`` reads and
writes each kind, ``plan.py`` compares and applies, ``auth_roles.py`` and
``auth_configs.py`` are the tables of auth method types whose roles and configs can be
declared.
"""

from __future__ import annotations

from broker.server.bootstrap.config import DeclarativeConfig, load_declarative
from broker.server.bootstrap.fields import DeclarativeConfigError
from broker.server.bootstrap.plan import Change, DeclarativeRunner, apply, pending, summary
from broker.server.bootstrap.targets import Targets

__all__ = [
    "Change",
    "DeclarativeConfig",
    "DeclarativeConfigError",
    "DeclarativeRunner",
    "Targets",
    "apply",
    "load_declarative",
    "pending",
    "summary",
]
