"""`reft-jax serve`: the command's options and the uvicorn server that runs the app (reft_jax.serve.app).

The server listens at once and loads the filter in the background (/healthz: 503, then 200). SIGTERM (or Ctrl-C)
stops accepting connections, answers the requests in flight and exits 0; a filter that cannot be loaded ends the
command with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from reft_jax.serve.settings import API_KEY_ENV, Settings

if TYPE_CHECKING:
    from reft_jax.config.schema import RunConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Settings()
    p.add_argument("--filter", metavar="DIR", help="a filter bundle (`reft-jax export --filter`) instead of --workdir")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every endpoint but /healthz (or set {API_KEY_ENV})")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait * 1e3,
                   help=f"how long a batch waits for more prompts once it has one (default {d.max_wait * 1e3:g})")
    p.add_argument("--max-inputs", type=int, default=d.max_inputs,
                   help=f"inputs per moderation request (default {d.max_inputs})")
    p.add_argument("--max-chars", type=int, default=d.max_chars,
                   help=f"characters per input or file row (default {d.max_chars})")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help=f"a moderation request's body (default {d.max_body_bytes})")
    p.add_argument("--max-file-bytes", type=int, default=d.max_file_bytes,
                   help=f"a file's body at /v1/filter (default {d.max_file_bytes})")
    p.add_argument("--log-prompts", action="store_true", help="write each prompt and its score to the log "
                   "(default: never)")


def exposure_warning(host: str, api_key: str) -> str | None:
    """The warning of a server any machine may reach (not loopback) that asks no key."""
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    if local or api_key:
        return None
    return (f"reft-jax serve: warning: listening on {host} without an API key: anyone who can reach it can use it "
            f"(--api-key KEY or {API_KEY_ENV})")


def serve(cfg: RunConfig, args: argparse.Namespace) -> int:
    """Runs the server of args.filter's bundle, or of the teacher in args.workdir trained by `cfg`, until SIGTERM or
    Ctrl-C; 0 after a graceful stop, 2 when the filter cannot be loaded."""
    from reft_jax.errors import ConfigError, ReftError

    try:
        import uvicorn

        from reft_jax.serve.app import Service, create_app
    except ImportError as e:
        raise ConfigError(f"serve: {e.name} is not installed; pip install 'reft-jax[serve]'") from None
    from reft_jax.experiment.context import RunContext
    from reft_jax.serve import bundle
    from reft_jax.serve.teacher_filter import TeacherFilter

    if bool(args.filter) == bool(args.workdir):
        raise ConfigError("serve: name the filter with --workdir DIR (a trained teacher) or --filter DIR (a bundle)")
    if args.filter and not bundle.is_bundle(args.filter):
        raise ConfigError(f"{args.filter}: not a filter bundle; write one with `reft-jax export --filter --out DIR`")

    _log_to_stderr(logging.getLogger("reft_jax.serve"))
    logging.getLogger("reft_jax.data.tokenization").setLevel(logging.WARNING)  # a line per request says nothing
    api_key = args.api_key or os.environ.get(API_KEY_ENV, "")
    warning = exposure_warning(args.host, api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    settings = Settings(api_key=api_key, max_wait=args.max_wait_ms / 1e3, max_inputs=args.max_inputs,
                        max_chars=args.max_chars, max_body_bytes=args.max_body_bytes,
                        max_file_bytes=args.max_file_bytes, log_prompts=args.log_prompts)
    failure: list[str] = []

    def fail(message: str) -> None:
        failure.append(message)
        server.should_exit = True

    if args.filter:
        load, batch_size = lambda: TeacherFilter(*bundle.read_bundle(args.filter)), bundle.batch_size(args.filter)
    else:
        load, batch_size = lambda: TeacherFilter.of_run(RunContext.create(cfg, args.workdir)), cfg.filter.batch_size
    service = Service(load, settings, batch_size, fail)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=args.host, port=args.port, lifespan="on",
                                           log_level="info", timeout_graceful_shutdown=None))
    # uvicorn takes SIGTERM and SIGINT while it serves (a graceful stop) and raises them again once stopped, for the
    # handlers it found: ignoring them then makes the stop exit 0.
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise ReftError(failure[0])
    return 0


def _log_to_stderr(log: logging.Logger) -> None:
    """The service's log lines (readiness, one per request) on stderr beside uvicorn's."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _stopped(signum, frame) -> None:
    """A signal uvicorn already acted on (a graceful stop)."""
