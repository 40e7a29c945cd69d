"""Resume waste: SIGKILL the daemon at random points of one big upload, restart it each
time, and count the bytes sent again per kill, against the part size.

    .venv/bin/python -m bench.resume [--size 1GiB] [--part 50MiB] [--kills 10] [--seed 1]

``syncd run`` (as under systemd) uploads one file to ``syncd serve`` through a counting
TCP proxy (tests/support/counting_proxy.py: bytes from client to server). Each cycle:
note the server's offset (``GET`` of the session, straight to the receiver), start the
daemon, SIGKILL it once the proxy has carried a random amount since the start (uniform
in 0.05 part .. 2 × size / (kills + 1), so the kills spread over the whole file and fall
anywhere inside a part), wait 0.5 s, read the server's offset again. Bytes sent again
by that kill = bytes carried in the cycle - the server's progress in the cycle. After the
last kill the daemon runs to ``done``. HTTP headers and multipart framing (a few hundred
bytes per request) count as waste too.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    DaemonRun,
    MiB,
    Receiver,
    dump_json,
    evict,
    fmt_med,
    log,
    machine,
    save_figure,
    syncd_config,
    table,
    temp_dir,
    write_random,
)
from syncd.units import parse_size
from tests.support.counting_proxy import CountingProxy


def _server_offset(daemon: DaemonRun, receiver: Receiver, proxy: CountingProxy) -> int:
    rows = daemon.query("SELECT session FROM uploads WHERE session IS NOT NULL ORDER BY id DESC LIMIT 1")
    if not rows:
        return 0
    url = rows[0][0].replace(f":{proxy.port}/", f":{receiver.port}/")
    r = requests.get(url, headers={"Authorization": f"Token {receiver.token}"}, timeout=10)
    r.raise_for_status()
    return int(r.json()["offset"])


def run(*, size: int, part: int, kills: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    result: dict[str, Any] = {"benchmark": "resume", "size": size, "part": part, "kills": kills, "seed": seed,
                              "machine": machine(), "cycles": []}
    with temp_dir("resume") as work:
        (work / "receiver").mkdir()
        receiver = Receiver(work / "receiver").start()
        proxy = CountingProxy(receiver.port).start()
        daemon = None
        try:
            base = work / "syncd"
            cfg = syncd_config(base, url=proxy.url_for(receiver.url), token=receiver.token, part_size=part,
                               quiet="300ms")
            log(f"resume: writing a {size / MiB:.0f} MiB file")
            src = write_random(base / "drop" / "big.bin", size)
            evict(src)
            t_start = time.monotonic()
            for i in range(kills + 1):
                daemon = DaemonRun(cfg)
                offset0 = _server_offset(daemon, receiver, proxy)
                sent0 = proxy.sent
                daemon.start()
                if i < kills:
                    amount = rng.uniform(0.05 * part, max(0.1 * part, 2 * size / (kills + 1)))
                    amount = min(amount, max(0.05 * part, (size - offset0) * 0.9))
                    daemon.wait_for(lambda sent0=sent0, amount=amount: proxy.sent - sent0 >= amount,
                                    timeout=120, interval=0.002,
                                    what=f"{amount / MiB:.0f} MiB sent")
                    daemon.kill()
                    time.sleep(0.5)
                else:
                    daemon.wait_done(1, timeout=120 + size / (2 * MiB), interval=0.1)
                    daemon.stop()
                sent = proxy.sent - sent0
                offset1 = size if i == kills else _server_offset(daemon, receiver, proxy)
                cycle = {"sent": sent, "offset_before": offset0, "offset_after": offset1,
                         "waste": sent - (offset1 - offset0), "killed": i < kills}
                result["cycles"].append(cycle)
                log(f"  {'kill' if i < kills else 'final'} {i + 1}: sent {sent / MiB:6.1f} MiB, server offset "
                    f"{offset0 / MiB:6.1f} -> {offset1 / MiB:6.1f} MiB, sent again {cycle['waste'] / MiB:5.1f} MiB")
            result["seconds"] = time.monotonic() - t_start
            stored = receiver.stored()
            if [p.stat().st_size for p in stored] != [size]:
                raise RuntimeError(f"the receiver holds {[(p.name, p.stat().st_size) for p in stored]}")
        finally:
            if daemon is not None:
                daemon.kill()
            proxy.stop()
            receiver.stop()
    killed = [c for c in result["cycles"] if c["killed"]]
    result["total_sent"] = sum(c["sent"] for c in result["cycles"])
    result["total_waste"] = result["total_sent"] - size
    result["waste_per_kill"] = [c["waste"] for c in killed]
    return result


def render(result: dict[str, Any]) -> str:
    part = result["part"]
    w = result["waste_per_kill"]
    rows = [
        ["bytes sent again per kill, MiB", fmt_med([x / MiB for x in w], "{:.1f}")],
        ["… as a fraction of the part size", fmt_med([x / part for x in w], "{:.2f}")],
        ["total sent / file size", f"{result['total_sent'] / result['size']:.3f}"],
        ["total sent again, MiB", f"{result['total_waste'] / MiB:.1f}"],
        ["wall time incl. restarts, s", f"{result['seconds']:.1f}"],
    ]
    return table(["measure", "value: median (min–max) over kills"], rows,
                 title=f"Resume waste: {result['kills']} SIGKILLs during one {result['size'] / MiB:.0f} MiB "
                       f"upload, {part / MiB:g} MiB parts")


def plot(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    killed = [c for c in result["cycles"] if c["killed"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(1, len(killed) + 1), [c["waste"] / MiB for c in killed], color="tab:blue")
    ax.axhline(result["part"] / MiB, color="red", linestyle="--", label=f"part size {result['part'] / MiB:g} MiB")
    ax.set_xlabel("kill")
    ax.set_xticks(range(1, len(killed) + 1))
    ax.set_ylabel("MiB sent again")
    ax.legend()
    ax.set_title(f"Resume waste per SIGKILL, {result['size'] / MiB:.0f} MiB file")
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.resume", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1GiB")
    p.add_argument("--part", default="50MiB")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    result = run(size=parse_size(args.size), part=parse_size(args.part), kills=args.kills, seed=args.seed)
    print(render(result))
    if args.json:
        dump_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
