"""Command line entry point: ``python -m simulator [options]``.

Every option can also be given as an environment variable ``SIM_<OPTION>`` (dashes become
underscores, e.g. ``SIM_LATENCY_JITTER``); the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError

from simulator.app import create_app
from simulator.config import SimConfig

log = logging.getLogger("simulator")

# (option, type, help); the default of each comes from SIM_<OPTION> or SimConfig.
_CONFIG_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("latency", float, "seconds a task runs (default 3.0)"),
    ("latency-jitter", float, "extra run time drawn from uniform(0, S) (default 0)"),
    ("latency-profile", str, "fixed (latency + jitter) or realistic (lognormal per model; simulator/latency.py)"),
    ("latency-sigma", float, "spread (lognormal sigma) of the realistic profile (default 0.12)"),
    ("latency-scale", float, "factor on realistic render times, e.g. 0.1 for quick runs (default 1)"),
    ("concurrency-per-model", int, "tasks of one model running at once (default 10)"),
    ("api-delay", float, "seconds added to every provider API call (default 0)"),
    ("video-pad-bytes", int, "size of a free box appended to each video (default 0)"),
    ("api-key", str, "the only accepted ModelArk Bearer key (default: any non-empty key)"),
    ("google-api-key", str, "the only accepted Vertex AI express-mode API key (default: any non-empty key)"),
    ("create-429-rate", float, "probability a create is answered 429"),
    ("create-5xx-rate", float, "probability a create is answered 500"),
    ("get-5xx-rate", float, "probability a task GET is answered 500"),
    ("fail-rate", float, "probability a task ends failed"),
    ("expire-rate", float, "probability a task ends expired"),
    ("seed", int, "seed of the random source (default: unseeded)"),
    ("public-url", str, "base of video URLs (default: the request's scheme://host:port)"),
    ("callback-delay-s", float, "seconds from a task's status change to its callback POST (default 0)"),
    ("callback-loss-rate", float, "probability a callback is never sent (default 0)"),
    ("callback-duplicate-rate", float, "probability a callback is sent twice (default 0)"),
)


def _env(option: str) -> str | None:
    return os.environ.get("SIM_" + option.replace("-", "_").upper())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line, falling back to SIM_* environment variables."""
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default=_env("host") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=_env("port") or 8000)
    parser.add_argument(
        "--access-log",
        action="store_true",
        default=(_env("access-log") or "").lower() in ("1", "true", "yes"),
        help="log every request (off by default: load tests poll a lot)",
    )
    for option, kind, help_text in _CONFIG_OPTIONS:
        # argparse runs `type` on string defaults, so env values are converted too.
        parser.add_argument(f"--{option}", type=kind, default=_env(option), help=help_text)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build a SimConfig from the parsed options that were given."""
    values: dict[str, Any] = {}
    for option, _, _ in _CONFIG_OPTIONS:
        value = getattr(args, option.replace("-", "_"))
        if value is not None:
            values[option.replace("-", "_")] = value
    return SimConfig.model_validate(values)


async def _serve(server: uvicorn.Server) -> None:
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        log.info("simulator listening on http://%s:%s", host, port)
    await serving


def main(argv: Sequence[str] | None = None) -> None:
    """Run the simulator until interrupted."""
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except ValidationError as err:
        raise SystemExit(f"invalid simulator configuration: {err}") from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, access_log=args.access_log))
    asyncio.run(_serve(server))


if __name__ == "__main__":
    main()
