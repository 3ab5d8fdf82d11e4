"""Which environment variables are secrets, and masking their values in text.

Pure Python. A secret reaches the job's process but is shown as `***` in reprs, JobInfo, error
messages and captured log lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

MASK = "***"

# Names that hold credentials by convention: HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY,
# GITHUB_TOKEN, DB_PASSWORD, GOOGLE_APPLICATION_CREDENTIALS_JSON, ...
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.IGNORECASE
)

# Values shorter than this are not masked inside free text: masking "1" or "ab" everywhere would
# garble logs without protecting anything.
_MIN_MASKED_LENGTH = 4


def is_secret(name: str) -> bool:
    """True if an environment variable of this name holds a credential (by naming convention)."""
    return bool(_SECRET_NAME.search(name))


def masked_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` with the values of secret names replaced by `***`, for display."""
    return {k: (MASK if is_secret(k) else v) for k, v in env.items()}


def secret_values(env: Mapping[str, str]) -> tuple[str, ...]:
    """The values of the secret names in `env` worth masking in text, longest first."""
    values = {v for k, v in env.items() if is_secret(k) and len(v) >= _MIN_MASKED_LENGTH}
    return tuple(sorted(values, key=len, reverse=True))


def mask(text: str, values: Iterable[str]) -> str:
    """`text` with every occurrence of each secret value replaced by `***`."""
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text
