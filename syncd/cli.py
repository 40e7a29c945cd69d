"""The ``syncd`` command line. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

from syncd import __version__
from syncd.config import DEFAULT_PORT, Config, ConfigError, default_config, load_config, redacted

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG_ENV = "SYNCD_CONFIG"

log = logging.getLogger("syncd")


JOURNAL_ONLY = ("status", "retry", "pause", "resume")
"""commands that only read or write the journal: they load the config without its secrets
and folders, so they work outside the service's environment"""


def _add_config(parser: argparse.ArgumentParser, *, quick_start: bool = False) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, required=not quick_start and DEFAULT_CONFIG_ENV not in os.environ,
        default=os.environ.get(DEFAULT_CONFIG_ENV),
        help=f"the YAML config file (default: ${DEFAULT_CONFIG_ENV}"
             + ("; without either, the quick-start setup in the current folder)" if quick_start else ")"))
    if quick_start:
        parser.add_argument("--port", type=_port, default=None,
                            help=f"the quick start's receiver port (default {DEFAULT_PORT}); only without -c")


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1..65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    from syncd.server.cli import add_serve_arguments

    parser = argparse.ArgumentParser(
        prog="syncd",
        description="Watch drop folders and upload every complete file, in resumable chunks, exactly once.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon",
                         description="Run the daemon. Without -c it runs the built-in quick-start setup "
                                     "in the current folder: it watches ./drop and uploads to a receiver "
                                     f"on 127.0.0.1:{DEFAULT_PORT} (--port to change) that stores into "
                                     "./received.")
    _add_config(run, quick_start=True)
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="override log.level from the config")

    serve = sub.add_parser("serve", help="run the receiving server",
                           description="Run the receiving server for the chunked upload protocol.")
    add_serve_arguments(serve)

    check = sub.add_parser("check-config", help="validate a config and print it resolved (secrets redacted)")
    _add_config(check, quick_start=True)
    check.add_argument("--skip-secrets", action="store_true",
                       help="check everything but the tokens: for a service config outside systemd, where "
                            "${CREDENTIALS_DIRECTORY} is not set")
    check.add_argument("--probe", action="store_true",
                       help="also reach each target once and say what works (S3: HEAD the bucket, put and "
                            "delete a tiny object under the prefix)")

    status = sub.add_parser("status", help="what is uploading, waiting, failed, and why")
    _add_config(status, quick_start=True)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--limit", type=int, default=20, help="rows per section (default 20)")

    retry = sub.add_parser("retry", help="try failed files again")
    _add_config(retry, quick_start=True)
    group = retry.add_mutually_exclusive_group(required=True)
    group.add_argument("--all-failed", action="store_true", help="every failed file")
    group.add_argument("paths", nargs="*", default=[], metavar="PATH",
                       help="files to retry: a path, or WATCH:RELPATH as `syncd status` prints it")

    for name, verb in (("pause", "pause"), ("resume", "resume")):
        control = sub.add_parser(
            name, help=f"{verb} uploads without stopping the daemon",
            description=f"{verb.capitalize()} uploads of everything (no option), one target or one watch. "
                        "Kept in the journal: only a user who can write it can do this; the running daemon "
                        "notices within a second, and a pause survives a restart.")
        _add_config(control, quick_start=True)
        scope = control.add_mutually_exclusive_group()
        scope.add_argument("--target", help="only uploads to this target")
        scope.add_argument("--watch", help="only files of this watch")

    upload = sub.add_parser("upload", help="upload files once, resumably, with a progress bar")
    _add_config(upload)
    upload.add_argument("--target", required=True, help="a target name from the config")
    upload.add_argument("--remote-dir", default="", help="folder on the server to put the files in")
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE")

    cleanup = sub.add_parser("cleanup", help="list (and abort) incomplete S3 multipart uploads no journal row owns",
                             description="List the incomplete multipart uploads under an S3 target's prefix that "
                                         "no open upload in the journal owns; with --abort, abort them.")
    _add_config(cleanup)
    cleanup.add_argument("--target", required=True, help="an s3 target name from the config")
    cleanup.add_argument("--older-than", type=_duration, default=None, metavar="DURATION",
                         help="only uploads started at least this long ago (default 1h)")
    cleanup.add_argument("--abort", action="store_true", help="abort them (default: only list them)")

    sub.add_parser("version", help="print the version")
    return parser


def _duration(text: str) -> float:
    from syncd.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run() -> NoReturn:
    """The ``syncd`` program: ``main``, then the exit.

    Once ``main`` has returned, every file, journal and connection is closed and the
    exit handlers have nothing left but to flush. Tearing down the interpreter's heap
    (every module, pydantic's schemas, ...) would then take 45-70 ms, a fifth of a short
    ``syncd upload``. The process skips it when every other thread left is a daemon
    thread, which a normal exit abandons too (else a normal exit waits for them).

    Output into a closed pipe (``syncd status | head -1``) ends it quietly with 1.
    """
    try:
        code = main()
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(EXIT_FAILURE)
    if all(t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        atexit._run_exitfuncs()  # what a normal exit runs: logging's flush among them
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:
            _quiet_stdout()
            code = code or EXIT_FAILURE
        os._exit(code)
    sys.exit(code)


def _quiet_stdout() -> None:
    """Points stdout at /dev/null, so the exit's own flush of a closed pipe finds nothing
    to complain about (the recipe of Python's ``signal`` documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"syncd {__version__}")
        return EXIT_OK
    if args.command == "serve":
        from syncd.server.cli import run_serve

        return run_serve(args)
    if getattr(args, "port", None) is not None and args.config is not None:
        print(f"syncd {args.command}: --port is for the quick start (no -c); in a config file set "
              "receiver.listen and the target's url", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.config is None:  # only commands with a quick start get here without -c
            config = default_config(Path.cwd(), port=args.port or DEFAULT_PORT, create_folders=False)
        else:
            config = load_config(args.config, check=args.command not in JOURNAL_ONLY,
                                 skip_secrets=getattr(args, "skip_secrets", False))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    if args.config is None and args.command in JOURNAL_ONLY and not config.journal.exists():
        print(f"syncd {args.command}: no -c given, and no quick-start journal in {config.journal.parent} "
              "(start `syncd run` in this folder first, or give -c FILE)", file=sys.stderr)
        return EXIT_FAILURE
    if args.command == "check-config":
        return cmd_check_config(config, probe=args.probe)
    if args.command == "cleanup":
        from syncd.cleanup import cmd_cleanup

        return cmd_cleanup(config, target=args.target, older_than=args.older_than, abort=args.abort)
    if args.command == "status":
        from syncd.status import cmd_status

        return cmd_status(config, as_json=args.json, limit=args.limit)
    if args.command == "retry":
        return cmd_retry(config, args)
    if args.command in ("pause", "resume"):
        from syncd.controls import cmd_pause, cmd_resume

        command = cmd_pause if args.command == "pause" else cmd_resume
        return command(config, target=args.target, watch=args.watch)
    if args.command == "upload":
        from syncd.oneshot import cmd_upload

        return cmd_upload(config, target=args.target, files=args.files, remote_dir=args.remote_dir)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


def cmd_check_config(config: Config, *, probe: bool = False) -> int:
    import yaml

    print(yaml.safe_dump(redacted(config), sort_keys=False, allow_unicode=True), end="")
    where = config.source if config.source != "<built-in>" else \
        f"the quick start in {config.journal.parent.parent} (no -c; `syncd run` creates its folders)"
    print(f"# {where}: ok", file=sys.stderr)
    if not probe:
        return EXIT_OK
    from syncd.probe import probe_targets

    lines, ok = probe_targets(config)
    for line in lines:  # as YAML comments: stdout stays the resolved config
        print(f"# {line}")
    return EXIT_OK if ok else EXIT_FAILURE


def cmd_run(args: argparse.Namespace) -> int:
    from syncd.daemon import Daemon, StartError, describe_config
    from syncd.journal import JournalError
    from syncd.live import LiveSettings
    from syncd.logs import register_secret, setup_logging
    from syncd.metrics import Metrics
    from syncd.notify import Notifier

    if args.config is not None:
        config = load_config(args.config)
    else:
        config = default_config(Path.cwd(), port=args.port or DEFAULT_PORT)
    setup_logging(level=args.log_level or config.log.level, fmt=config.log.format)
    for target in config.targets.values():
        if token := target.resolve_token():
            register_secret(token)
    if config.receiver is not None and (token := config.receiver.resolve_token()):
        register_secret(token)
    if args.config is None:
        log.info("no -c given: running the built-in quick start; drop files into %s",
                 config.watches[0].path)
    log.info("syncd %s: %s", __version__, describe_config(config))

    daemon = live = None
    try:
        daemon = Daemon(config, config_path=args.config, notifier=Notifier.from_environ())
        # metrics count from the start; metrics.listen says where (and whether) they are served
        daemon.metrics = Metrics(state_counts=daemon.journal_counts, queue_depth=daemon.queue_depth,
                                 oldest_pending_age=daemon.oldest_pending_age, controls=daemon)
        live = LiveSettings(daemon.metrics, level_override=args.log_level)
        daemon.on_reload = live.apply
        live.serve_metrics(config)
        daemon.open()
    except (JournalError, StartError, OSError) as exc:
        log.error("cannot start: %s", exc)
        if daemon is not None:
            daemon.shutdown()
        if live is not None:
            live.close()
        return EXIT_FAILURE
    try:
        return daemon.run()
    except JournalError as exc:
        log.error("stopping: %s", exc)
        return EXIT_FAILURE
    finally:
        live.close()


def cmd_retry(config: Config, args: argparse.Namespace) -> int:
    from syncd.journal import Journal, JournalError

    if not config.journal.exists():  # retry never starts a journal of its own
        print(f"syncd retry: {config.journal}: no journal here (has the daemon run yet?)", file=sys.stderr)
        return EXIT_FAILURE
    try:
        journal = Journal(config.journal)
    except JournalError as exc:
        print(f"syncd retry: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        if args.all_failed:
            n = journal.retry(all_failed=True)
            print(f"{n} failed file(s) will be tried again")
            return EXIT_OK
        ids, missing = [], []
        for raw in args.paths:
            row = _find_row(config, journal, raw)
            (ids.append(row.id) if row else missing.append(raw))
        for raw in missing:
            print(f"syncd retry: {raw}: not a file syncd knows (is it inside a watch?)", file=sys.stderr)
        n = journal.retry(file_ids=ids)
        print(f"{n} file(s) will be tried again")
        return EXIT_OK if not missing else EXIT_FAILURE
    finally:
        journal.close()


def _find_row(config: Config, journal, raw: str):
    """The journal row of ``raw``: ``WATCH:RELPATH`` as ``syncd status`` prints it, or a path."""
    watch, sep, relpath = raw.partition(":")
    if sep and any(w.name == watch for w in config.watches):
        row = journal.find_file(watch, relpath)
        if row is not None:
            return row
    path = Path(raw).absolute()
    for watch in config.watches:
        root = watch.path.resolve()
        for candidate in (path, path.resolve()):
            if root in candidate.parents:
                row = journal.find_file(watch.name, candidate.relative_to(root).as_posix())
                if row is not None:
                    return row
    return None
