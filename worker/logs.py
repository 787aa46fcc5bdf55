"""One line per event with the job id and other fields as key=value pairs; nothing from
settings is ever passed to a log call, so no secret reaches the logs."""

from __future__ import annotations

import logging

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """`time level logger message key=value ...` for the fields given in `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
        return line


def configure(level: str) -> None:
    """Send videoqueue's logs to stderr in the key=value format."""
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("videoqueue")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The SDKs log request details at DEBUG; keep them quiet whatever our level is.
    for noisy in ("httpx", "httpcore", "byteplussdkarkruntime", "botocore", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
