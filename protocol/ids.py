"""The one id pattern of osfl: site ids, federation ids, bundle versions, artifact names' second part.

1 to 64 characters, letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit.
Matched in full (``re.fullmatch``): a trailing newline is not part of an id.
"""
from __future__ import annotations

import re
from typing import Any

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
ID_RE = re.compile(ID_PATTERN)
ID_RULE = "1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_id(value: Any) -> bool:
    """True when ``value`` is a string that is an id as a whole."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None
