"""Settings, built once at the edge (the command line) and passed down explicitly.

Nothing in Backstop reads the environment or the config file at import time; this module is
the one place that turns ``-c FILE``, ``$BACKSTOP_CONFIG`` and ``$BACKSTOP_BROKER_URL`` into
values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from backstop.config import Config, Encryption
from backstop.config_load import read_config

DEFAULT_CONFIG = "backstop.yaml"
CONFIG_ENV = "BACKSTOP_CONFIG"
BROKER_ENV = "BACKSTOP_BROKER_URL"
DATA_TOKEN_ENV = "BACKSTOP_DATA_TOKEN"
SENTINEL_PASSWORD_ENV = "BACKSTOP_SENTINEL_PASSWORD"
IDENTITY_ENV = "BACKSTOP_IDENTITY_FILE"
# The fleet's data token, in state_dir, when data_path.token_file names no other file.
DATA_TOKEN_FILE = "data-token"


@dataclass(frozen=True)
class Settings:
    config_path: Path
    config: Config
    # A broker named by the environment or the config; None means the embedded broker of
    # `backstop up`, found through state_dir.
    broker_url: str | None
    # The fleet's data token given by the environment; None: read it from its file.
    data_token: str | None = None
    # sha256 of the config file's bytes, first 12 hex digits (heartbeats, status)
    config_hash: str = ""
    # The Sentinels' own password (env wins over the config's broker_sentinel_password)
    sentinel_password: str | None = None
    # Keys of each S3 data store, from the environment variables its config names
    # ("" where a variable is not set); never shown
    s3_keys: Mapping[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    # The age identity file the environment names (wins over the config's)
    identity_file_env: Path | None = None

    @property
    def base_dir(self) -> Path:
        """Relative paths in the config are relative to the config file's directory."""
        return self.config_path.parent

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else self.base_dir / path

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.config.state_dir)

    def encryption_of(self, task: str) -> Encryption | None:
        """How ``task``'s savesets are encrypted: its own, ``none``, else the default."""
        own = next(t for t in self.config.tasks if t.name == task).encryption
        if own == "none":
            return None
        return own if isinstance(own, Encryption) else self.config.encryption

    def identity_file_of(self, task: str) -> Path | None:
        """The identity file that reads ``task``'s savesets on this host, if any:
        $BACKSTOP_IDENTITY_FILE, else the task's or the default encryption's."""
        if self.identity_file_env is not None:
            return self.identity_file_env
        own = self.encryption_of(task)
        named = own.identity_file if own else None
        if named is None and self.config.encryption is not None:
            named = self.config.encryption.identity_file
        return self.resolve(named) if named else None

    @property
    def data_token_file(self) -> Path:
        named = self.config.data_path.token_file
        return self.resolve(named) if named else self.state_dir / DATA_TOKEN_FILE


def config_path(option: str | None, environ: Mapping[str, str]) -> Path:
    """``-c FILE``, else ``$BACKSTOP_CONFIG``, else ``./backstop.yaml``."""
    return Path(option or environ.get(CONFIG_ENV) or DEFAULT_CONFIG).absolute()


def load_settings(option: str | None, environ: Mapping[str, str]) -> Settings:
    path = config_path(option, environ)
    config, config_hash = read_config(path)
    return Settings(config_path=path, config=config,
                    broker_url=environ.get(BROKER_ENV) or config.broker_url,
                    data_token=environ.get(DATA_TOKEN_ENV) or None, config_hash=config_hash,
                    sentinel_password=(environ.get(SENTINEL_PASSWORD_ENV)
                                       or config.broker_sentinel_password),
                    s3_keys={s.name: (environ.get(s.s3.access_key_env, ""),
                                      environ.get(s.s3.secret_key_env, ""))
                             for s in config.data_stores if s.s3 is not None},
                    identity_file_env=(Path(environ[IDENTITY_ENV]).absolute()
                                       if environ.get(IDENTITY_ENV) else None))
