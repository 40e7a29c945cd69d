"""Upload one file with tuspy (PyPI ``tuspy``, the tus project's Python client) as its own
process, so its memory and disk reads can be measured:

    python -m bench._tuspy URL TOKEN FILE CHUNK_BYTES
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    from tusclient import client

    url, token, path, chunk = argv[0], argv[1], argv[2], int(argv[3])
    tus = client.TusClient(url, headers={"Authorization": f"Bearer {token}"})
    # with metadata, as a client would send it (@tus/server refuses an empty Upload-Metadata)
    uploader = tus.uploader(path, chunk_size=chunk, retries=3, retry_delay=1,
                            metadata={"filename": os.path.basename(path)})
    uploader.upload()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
