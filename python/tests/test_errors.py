"""The client's error classes match the server's list of error codes, and
error answers map to them (no server needed)."""

from __future__ import annotations

import re

import pytest

import cherga
from cherga.errors import _STATUS_CLASSES, ERROR_CLASSES, ChergaError, error_from_response
from tests.harness import PYTHON_DIR

ERROR_RS = PYTHON_DIR.parent / "crates" / "cherga-api" / "src" / "error.rs"


def server_codes() -> dict[str, int]:
    """Each code of the server's ``ErrorCode`` with its HTTP status, read from
    the Rust source: the ``error_codes!`` table, one ``Variant = "code" =>
    status,`` line per code."""
    assert ERROR_RS.is_file(), f"{ERROR_RS} not found: the test reads the server's error codes from it"
    source = ERROR_RS.read_text()
    table = re.search(r"^error_codes! \{\n(.*?)^\}", source, re.S | re.M)
    assert table, f"no `error_codes! {{ ... }}` table in {ERROR_RS}"
    rows = re.findall(r'^\s*(\w+) = "([a-z_]+)" => (\d{3}),$', table.group(1), re.M)
    # Every line is a doc comment or a row: a row this pattern misses is a failure, not a skip.
    lines = [line.strip() for line in table.group(1).splitlines()]
    assert len(rows) == sum(1 for line in lines if line and not line.startswith("///")), table.group(1)
    assert rows, table.group(1)
    return {code: int(status) for _, code, status in rows}


def test_the_client_knows_every_error_code_of_the_server() -> None:
    codes = server_codes()
    assert sorted(ERROR_CLASSES) == sorted(codes)


def test_each_error_class_sits_under_the_family_of_its_status() -> None:
    for code, status in server_codes().items():
        cls = ERROR_CLASSES[code]
        family = _STATUS_CLASSES.get(status)
        assert family is not None, f"no class for HTTP {status}"
        assert issubclass(cls, family), f"{cls.__name__} ({code}, HTTP {status}) is not a {family.__name__}"
        error = error_from_response(status, {"error": {"code": code, "message": "m"}})
        assert type(error) is cls and error.code == code and error.status == status
        # Exported from the package, for `except cherga.X`.
        assert getattr(cherga, cls.__name__) is cls and cls.__name__ in cherga.__all__


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "unauthorized", cherga.Unauthorized),
        (403, "forbidden", cherga.Forbidden),
        (408, "request_timeout", cherga.RequestTimeout),
        (429, "too_many_requests", cherga.TooManyRequests),
    ],
)
def test_auth_and_limit_errors(status: int, code: str, cls: type[ChergaError]) -> None:
    error = error_from_response(status, {"error": {"code": code, "message": "m"}})
    assert type(error) is cls and error.status == status
    # A proxy's page without the API's body still maps by status.
    assert type(error_from_response(status, None)) is cls


def test_too_many_requests_carries_retry_after() -> None:
    body = {"error": {"code": "too_many_requests", "message": "too many long polls"}}
    error = error_from_response(429, body, {"retry-after": "7"})
    assert isinstance(error, cherga.TooManyRequests) and error.retry_after == 7.0
    assert error_from_response(429, body).retry_after is None
    assert error_from_response(429, body, {"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}).retry_after is None


def test_payload_invalid_carries_the_violations() -> None:
    violation = {"pointer": "/amount", "keyword": "minimum", "schema_pointer": "/properties/amount/minimum"}
    body = {"error": {"code": "payload_invalid", "message": "m", "violations": [violation, "not a dict"]}}
    error = error_from_response(422, body)
    assert isinstance(error, cherga.PayloadInvalid) and isinstance(error, cherga.Unprocessable)
    assert error.violations == [violation]
    assert isinstance(error_from_response(422, None), cherga.Unprocessable)
