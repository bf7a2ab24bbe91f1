"""Named crash points for the crash-safety tests.

``BROKER_CRASH_AT=<name>`` makes the process die (like ``kill -9``: no cleanup, no
``finally``) when it reaches that point. Unset in normal operation, so a crash point costs
one comparison.
"""

from __future__ import annotations

import os

_CRASH_AT = os.environ.get("BROKER_CRASH_AT", "")


def crash_point(name: str) -> None:
    if name == _CRASH_AT:
        os._exit(86)
