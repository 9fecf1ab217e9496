"""The checks config sections validate their fields with: each raises ConfigError naming the key."""

from __future__ import annotations

from gptray.core.errors import ConfigError
from gptray.core.paths import credentials_in


def require(ok: bool, key: str, message: str, value) -> None:
    """`message` about the key's value unless `ok`."""
    if not ok:
        raise ConfigError(key, f"{message} (got {value!r})")


def no_credentials(key: str, location: str | None) -> None:
    """A URI with credentials in it would be logged, saved in config.yaml and sent to MLflow: refused."""
    where = credentials_in(location) if location else None
    if where:  # the value itself is not repeated: it holds the secret
        raise ConfigError(key, f"holds credentials ({where}), which would be logged and saved with the run: "
                               "give them in the environment instead (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                               "GOOGLE_APPLICATION_CREDENTIALS, MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
                               "or MLFLOW_TRACKING_TOKEN)")
