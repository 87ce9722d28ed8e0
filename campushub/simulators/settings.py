"""The stand-in systems' own settings: the world's seed and size, and their credentials.

Credentials come from the same environment variables the connectors read, so one `.env` file
configures both sides; unset, the simulators fall back to development values. (The connectors
have no such fallback: a hub must be told its sources' credentials.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_PORTS = {"academic": 8101, "hr": 8102, "finance": 8103, "card": 8104}


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class SimulatorSettings:
    seed: int = 2026
    students: int = 5_000
    academic_api_key: str = field(default="dev-academic-key", repr=False)
    hr_client_id: str = "campushub"
    hr_client_secret: str = field(default="dev-hr-secret", repr=False)
    hr_token_lifetime: float = 300.0  # seconds; short, so a long sync must refresh
    finance_user: str = "campushub"
    finance_password: str = field(default="dev-finance-secret", repr=False)
    card_app_key: str = "campushub"
    card_app_secret: str = field(default="dev-card-secret", repr=False)
    card_max_clock_skew: float = 300.0  # seconds a signed request's timestamp may be off

    @classmethod
    def from_env(cls, **overrides: object) -> SimulatorSettings:
        values: dict[str, object] = {
            "academic_api_key": _env("CAMPUSHUB_ACADEMIC_API_KEY", cls.academic_api_key),
            "hr_client_id": _env("CAMPUSHUB_HR_CLIENT_ID", cls.hr_client_id),
            "hr_client_secret": _env("CAMPUSHUB_HR_CLIENT_SECRET", cls.hr_client_secret),
            "finance_user": _env("CAMPUSHUB_FINANCE_USER", cls.finance_user),
            "finance_password": _env("CAMPUSHUB_FINANCE_PASSWORD", cls.finance_password),
            "card_app_key": _env("CAMPUSHUB_CARD_APP_KEY", cls.card_app_key),
            "card_app_secret": _env("CAMPUSHUB_CARD_APP_SECRET", cls.card_app_secret),
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
