"""Helpers shared by test modules (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from typing import Any

from botocore.awsrequest import AWSResponse

from cyclegan_jobs.config import TrainConfig, preset


def tiny_config(domains: dict, store: str, size: int, **changes: Any) -> TrainConfig:
    """A tiny-preset TrainConfig on sample domains (as write_sample_domains returns them).

    Checkpoints and samples are rare unless a test asks for them, so short runs spend their
    time training.
    """
    model_cfg, loss_cfg = preset("tiny", size)
    base: dict[str, Any] = {
        "domain_a": domains["domain_a"],
        "domain_b": domains["domain_b"],
        "model_store": store,
        "model": model_cfg,
        "loss": loss_cfg,
        "checkpoint_every": 1000,
        "sample_every": 1000,
    }
    return TrainConfig(**{**base, **changes})


def s3_error(request: Any, status: int, code: str) -> AWSResponse:
    """An S3 error answer for a botocore `before-send` hook (fault injection without a server)."""
    body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
    return AWSResponse(request.url, status, {}, _RawBody(body))


class _RawBody:
    """The minimal urllib3-like raw response botocore reads an AWSResponse body from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *args: object, **kwargs: object) -> list[bytes]:
        return [self._body]
