"""How every Kafka client connects: TLS to verify and encrypt, SASL to authenticate.

A managed or Strimzi cluster takes clients on a TLS listener, often with SASL
(PLAIN or SCRAM) or a client certificate. The settings below apply alike to each
client of a process: its producer, its consumers, the catch-up's readers, the admin
client that creates topics, and the CLI's. PLAINTEXT, the default, adds nothing.

The TLS files are read when the settings are (at start-up, before any connection),
so a missing or unusable file is one clear error naming its setting.
"""

from __future__ import annotations

import ssl
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)
from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_SASL_SECURITY = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


class KafkaSecurityError(ValueError):
    """A setting cannot be used to connect; the message names it and quotes no secret."""


class KafkaSecuritySettings(BaseSettings):
    """KAFKA_SECURITY_PROTOCOL, and the KAFKA_SSL_* and KAFKA_SASL_* settings it needs."""

    # hide_input_in_errors: an error about the SASL password must not quote it.
    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_ssl_ca_file: Path | None = None
    """PEM certificates to verify the brokers by; the system's trusted ones when unset."""
    kafka_ssl_cert_file: Path | None = None
    """This client's PEM certificate (chain), for a cluster that authenticates clients by TLS."""
    kafka_ssl_key_file: Path | None = None
    """The private key of KAFKA_SSL_CERT_FILE, when it is not in that file."""
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    """Whether a broker's certificate must name the host connected to."""
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None

    @field_validator(
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        "kafka_ssl_key_password",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # A Secret or ConfigMap key left empty is how an operator says "not used" there.
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def _uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    @property
    def _uses_sasl(self) -> bool:
        return self.kafka_security_protocol.startswith("SASL_")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecuritySettings:
        protocol = self.kafka_security_protocol
        tls_given = [
            name
            for name in ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")
            if getattr(self, name) is not None
        ]
        if tls_given and not self._uses_tls:
            raise ValueError(
                f"{_env(tls_given[0])} is set, but KAFKA_SECURITY_PROTOCOL is {protocol}: "
                "use SSL or SASL_SSL"
            )
        if self.kafka_ssl_key_file is not None and self.kafka_ssl_cert_file is None:
            raise ValueError("KAFKA_SSL_KEY_FILE is set without KAFKA_SSL_CERT_FILE")
        sasl_given = [
            name
            for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
            if getattr(self, name) is not None
        ]
        if self._uses_sasl:
            missing = [
                _env(name)
                for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
                if name not in sasl_given
            ]
            if missing:
                raise ValueError(f"KAFKA_SECURITY_PROTOCOL {protocol} needs {', '.join(missing)}")
        elif sasl_given:
            raise ValueError(
                f"{_env(sasl_given[0])} is set, but KAFKA_SECURITY_PROTOCOL is {protocol}: "
                "use SASL_PLAINTEXT or SASL_SSL"
            )
        if self._uses_tls:
            # At start-up, before any connection: a file that cannot be used is a bad setting.
            # Built once, then shared by every client of the process.
            _ = self.kafka_ssl_context
        return self

    def kafka_client_options(self) -> dict[str, Any]:
        """Return the options that make an aiokafka client connect as configured."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self._uses_tls:
            options["ssl_context"] = self.kafka_ssl_context
        if self._uses_sasl:
            mechanism, username, password = self._sasl()
            options |= {
                "sasl_mechanism": mechanism,
                "sasl_plain_username": username,
                "sasl_plain_password": password,
            }
        return options

    def kafka_broker_security(self) -> BaseSecurity | None:
        """Return the same, for a FastStream broker."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return None
        context = self.kafka_ssl_context if self._uses_tls else None
        if not self._uses_sasl:
            return BaseSecurity(ssl_context=context, use_ssl=True)
        mechanism, username, password = self._sasl()
        return _SASL_SECURITY[mechanism](
            username, password, ssl_context=context, use_ssl=self._uses_tls
        )

    def _sasl(self) -> tuple[SaslMechanism, str, str]:
        mechanism, username = self.kafka_sasl_mechanism, self.kafka_sasl_username
        password = self.kafka_sasl_password
        if mechanism is None or username is None or password is None:
            # _consistent refuses such settings; this is for settings built without it.
            raise KafkaSecurityError(
                "SASL needs KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        return mechanism, username, password.get_secret_value()

    @cached_property
    def kafka_ssl_context(self) -> ssl.SSLContext:
        """Return the TLS context: brokers verified by the CA file (or the system's CAs)."""
        try:
            context = ssl.create_default_context(
                cafile=str(self.kafka_ssl_ca_file) if self.kafka_ssl_ca_file else None
            )
        except (OSError, ssl.SSLError) as error:
            raise KafkaSecurityError(_unusable("KAFKA_SSL_CA_FILE", error)) from None
        context.check_hostname = self.kafka_ssl_check_hostname
        if self.kafka_ssl_cert_file is not None:
            password = self.kafka_ssl_key_password
            try:
                context.load_cert_chain(
                    self.kafka_ssl_cert_file,
                    self.kafka_ssl_key_file,
                    password.get_secret_value() if password is not None else None,
                )
            except (OSError, ssl.SSLError) as error:
                raise KafkaSecurityError(
                    _unusable("KAFKA_SSL_CERT_FILE or KAFKA_SSL_KEY_FILE", error)
                ) from None
        return context


def _env(field: str) -> str:
    return field.upper()


def _unusable(setting: str, error: Exception) -> str:
    # The OS's or OpenSSL's reason (file not found, wrong password, not PEM), never a secret.
    reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or str(error)
    return f"{setting} cannot be used: {reason}"
