"""JSON decoding with the field-matching rules of Go's ``encoding/json``.

The reference verifier decodes signed metadata and DSSE envelopes into Go structs: a key
matches a field exactly or, failing that, case-insensitively; the last duplicate wins;
unknown keys are ignored. Decoding the same bytes by the same rules keeps siffs from reading
a signed document differently from Singularity/Apptainer.
"""

from __future__ import annotations

import json
from typing import Any


class GoObject(dict[str, Any]):
    """A decoded JSON object whose ``get`` finds a field the way Go's decoder does."""

    def get(self, name: str, default: Any = None) -> Any:
        if name in self:
            return self[name]
        folded = [v for k, v in self.items() if k.casefold() == name.casefold()]
        return folded[-1] if folded else default


def loads(data: bytes | str) -> Any:
    """Decode one JSON document (surrounding whitespace allowed, nothing else); ``ValueError`` if bad."""
    try:
        return json.loads(data, object_pairs_hook=GoObject, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _not_json(name: str) -> Any:
    # Python accepts NaN and Infinity; JSON (and Go) do not.
    raise ValueError(f"{name} is not JSON")
