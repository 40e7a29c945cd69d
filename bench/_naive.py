"""Run the synapse-sdk-style naive client (tests/support/synapse_client.py) as its own
process, so its memory and disk reads can be measured:

    python -m bench._naive URL TOKEN FILE [CHUNK_BYTES]
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.synapse_client import DEFAULT_CHUNK_SIZE, upload_file


def main(argv: list[str]) -> int:
    url, token, path = argv[:3]
    chunk = int(argv[3]) if len(argv) > 3 else DEFAULT_CHUNK_SIZE
    # the SDK's own (5, 15) timeouts, widened: on a loaded 2-core machine a server may
    # take longer than 15 s to answer a 50 MiB part, and a timeout is not what we measure
    upload_file(url, Path(path), token=token, chunk_size=chunk, timeout=(5, 120))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
