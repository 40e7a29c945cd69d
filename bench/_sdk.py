"""Run the real synapse-sdk client's chunked upload as its own process:

    SDK_PYTHON -m bench._sdk BASE_URL TOKEN FILE [CHUNK_BYTES]

``SDK_PYTHON`` is the interpreter of the virtualenv ``bench/install-sdk`` makes (the SDK's
wheel declares Python >= 3.12; its HTTP client runs on 3.11). ``BackendClient(base_url,
authorization_token=TOKEN).create_chunked_upload(FILE, chunk_size=CHUNK)``: each chunk read
whole, MD5 updated, ``PUT`` as ``files=``, then ``POST`` of the MD5.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from synapse_sdk.clients.backend import BackendClient

    base_url, token, path = argv[:3]
    kwargs = {"chunk_size": int(argv[3])} if len(argv) > 3 else {}
    # the SDK's read timeout (15 s) widened, as for the naive client: a loaded 2-core
    # machine may take longer to answer a 50 MiB part, and a timeout is not what we measure
    client = BackendClient(base_url, authorization_token=token, timeout={"connect": 5, "read": 120})
    result = client.create_chunked_upload(path, **kwargs)
    if not result.get("completed_at") and "md5" not in result:
        print(f"unexpected answer: {result}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
