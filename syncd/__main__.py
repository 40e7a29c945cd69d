"""``python -m syncd`` and the ``syncd`` program (``cli.run``).

``syncd run`` first starts again without glibc's per-thread caches
(``allocator.restart_without_thread_caches``), before the rest of syncd is imported, so
that costs the start of a bare interpreter and not the imports as well.
"""

import sys


def run() -> None:
    if sys.argv[1:2] == ["run"]:
        from syncd.allocator import restart_without_thread_caches

        restart_without_thread_caches()
    from syncd.cli import run as program

    program()


if __name__ == "__main__":
    run()
