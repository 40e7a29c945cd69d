"""``python -m syncd.server --root DIR ...``: the receiver alone, as ``syncd serve`` runs it."""

import argparse

from syncd.server.cli import add_serve_arguments, run_serve

parser = argparse.ArgumentParser(prog="python -m syncd.server")
add_serve_arguments(parser)
raise SystemExit(run_serve(parser.parse_args()))
