"""The prompt of ``lacoat augment``: a YAML template with a system and a user message.

The template file holds ``system``, ``user`` (with ``{caption}`` and ``{n}``, replaced literally) and
an optional ``temperature``. Its hash, over the parsed content, keys the stored answers and is written
into every output row, so a changed prompt never reuses answers to the old one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from lacoat.errors import DataError

DEFAULT_PROMPT = "default_prompt.yaml"


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt asking for ``n`` paraphrases of one caption.

    Args:
        system: the system message.
        user: the user message; ``{caption}`` and ``{n}`` are replaced by the caption and the count.
        temperature: sampling temperature sent with each request.
    """

    system: str
    user: str
    temperature: float = 0.9

    @classmethod
    def load(cls, path: str | Path | None = None) -> PromptTemplate:
        """Read a template file (default: the one shipped with lacoat, for audio captions).

        Raises:
            DataError: the file is missing, not YAML, or lacks ``user`` with ``{caption}`` and ``{n}``.
        """
        import yaml

        if path is None:
            text = resources.files("lacoat.augment").joinpath(DEFAULT_PROMPT).read_text(encoding="utf-8")
            where = f"lacoat/augment/{DEFAULT_PROMPT}"
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as err:
                raise DataError(f"cannot read prompt template '{path}': {err.strerror}") from err
            where = str(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise DataError(f"prompt template '{where}' is not valid YAML: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("user"), str):
            raise DataError(f"prompt template '{where}' needs a `user:` text (and optionally `system:`).")
        unknown = sorted(set(data) - {"system", "user", "temperature"})
        if unknown:
            raise DataError(
                f"prompt template '{where}' has unknown key(s) {unknown}; allowed: system, user, temperature"
            )
        missing = [f for f in ("{caption}", "{n}") if f not in data["user"]]
        if missing:
            raise DataError(f"the `user:` text of prompt template '{where}' must contain {missing}.")
        return cls(
            system=str(data.get("system") or ""),
            user=data["user"],
            temperature=float(data.get("temperature", 0.9)),
        )

    @property
    def hash(self) -> str:
        """12 hex digits identifying this prompt (system, user and temperature)."""
        blob = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:12]

    def messages(self, caption: str, n: int) -> list[dict[str, str]]:
        """Chat messages asking for ``n`` paraphrases of ``caption``."""
        user = self.user.replace("{n}", str(n)).replace("{caption}", caption)
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}
        ]
