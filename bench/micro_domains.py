"""Micro-benchmark: loading a blocklist of two million domains, its memory, and one lookup.

Run from the repository root::

    python bench/micro_domains.py                  # 2,000,000 domains (about a minute)
    python bench/micro_domains.py --domains 20000
    python bench/micro_domains.py --urls 100000    # and a urls file

It writes a synthetic category directory (``games/domains`` in a temporary
directory: different names of random labels of 3 to 14 letters and digits,
about 8 on average, a third of the names with a subdomain, TLDs weighted
towards .com, a few comments and blank lines; with ``--urls``, a ``urls``
file of other hosts with a path of two segments each), then, in a fresh Python
process that has imported tinspect (as the proxy has), reads it with `tinspect.taplib.domains.read_category` and
reports the time it took, the RSS it added once loaded (steady) and at its
highest (peak, from the kernel's ``VmHWM`` reset just before), and the
microseconds of CPU per lookup (a `Query` and `DomainList.match`, as the
filter does per request; CPU time, so that other work on the machine
counts less) of host names with four labels: listed (a listed domain with
labels in front) and not listed (under ``.invalid``), over 20,000 different
names each, best of five.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"
TLDS = ["com"] * 50 + ["net"] * 8 + ["org"] * 8 + ["de", "fr", "ru", "info", "io", "co.uk", "com.br", "xyz"] * 2
HOSTS = 20000  # lookups timed, each on a different name


def label(rng: random.Random) -> str:
    """A random label of 3 to 14 letters and digits, about 8 on average."""
    return bytes(rng.choices(ALPHABET, k=rng.randint(3, 8) + rng.randint(0, 6))).decode()


def write_category(directory: Path, n: int, urls: int = 0, seed: int = 1) -> list[str]:
    """Write ``n`` different domains to ``directory/domains`` (and ``urls`` URLs to
    ``directory/urls``); return a sample of the domains for lookups."""
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    sample, seen = [], set()
    with (directory / "domains").open("w") as f:
        f.write("# synthetic category for bench/micro_domains.py\n\n")
        for i in range(n):
            name = ""
            while not name or name in seen:
                name = f"{label(rng)}.{rng.choice(TLDS)}"
                if rng.random() < 0.3:
                    name = f"{label(rng)}.{name}"
            seen.add(name)
            f.write(name + "\n")
            if i % max(1, n // HOSTS) == 0 and len(sample) < HOSTS:
                sample.append(name)
            if i % 100000 == 99999:
                f.write("# another part of the list\n")
    if urls:
        with (directory / "urls").open("w") as f:
            for _ in range(urls):
                f.write(f"{label(rng)}{label(rng)}.{rng.choice(TLDS)}/{label(rng)}/{label(rng)}\n")
    return sample


def four_labels(name: str, rng: random.Random) -> str:
    """``name`` with labels put in front until it has four."""
    while name.count(".") < 3:
        name = f"{label(rng)}.{name}"
    return name


def rss() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def child(directory: Path, listed: list[str]) -> dict:
    """Load the category in this (fresh) process and measure; the figures as a dict."""
    sys.path.insert(0, str(REPO))
    import tinspect  # noqa: F401  (the proxy has it all imported: measure what the list adds)
    from tinspect.taplib.domains import Query, read_category

    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak is the load's own
    except OSError:
        pass
    before = rss()["VmRSS"]
    started, cpu = time.perf_counter(), time.process_time()
    category = read_category(directory)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    after = rss()
    rng = random.Random(2)
    hits = [four_labels(name, rng) for name in listed]
    misses = [f"www.{label(rng)}.{label(rng)}.invalid" for _ in range(HOSTS)]  # a TLD the list never has
    assert all(category.match(Query(h, "/")) for h in hits) and not any(category.match(Query(h, "/")) for h in misses)

    def per_lookup(hosts: list[str]) -> float:
        def run():
            for host in hosts:
                category.match(Query(host, "/index.html"))
        return min(timeit.repeat(run, number=1, repeat=5, timer=time.process_time)) / len(hosts) * 1e6

    return {"entries": len(category), "seconds": seconds, "cpu": cpu_seconds,
            "steady": after["VmRSS"] - before, "peak": after["VmHWM"] - before,
            "hit": per_lookup(hits), "miss": per_lookup(misses)}


def main() -> None:
    """Write the list, measure in a child process, print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=2_000_000, help="how many domains (default 2,000,000)")
    parser.add_argument("--urls", type=int, default=0, help="how many URLs in a urls file beside them (default none)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        directory = Path(args.child)
        print(json.dumps(child(directory, json.loads((directory.parent / "sample.json").read_text()))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        games = Path(tmp) / "games"
        sample = write_category(games, args.domains, args.urls)
        (Path(tmp) / "sample.json").write_text(json.dumps(sample))
        size = sum(f.stat().st_size for f in games.iterdir())
        out = subprocess.run([sys.executable, __file__, "--child", str(games)], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"the measuring process failed:\n{out.stderr}")
    got = json.loads(out.stdout)
    print(f"python {sys.version.split()[0]}")
    urls = f" and {args.urls:,} URLs" if args.urls else ""
    print(f"{args.domains:,} domains{urls} ({size / 2**20:.1f} MiB, {got['entries']:,} distinct), one category")
    print(f"{'load (read, hash, sort)':40s} {got['seconds']:8.2f} s")
    print(f"{'load, CPU time':40s} {got['cpu']:8.2f} s")
    print(f"{'RSS added, steady':40s} {got['steady']:8.1f} MiB")
    print(f"{'RSS added, peak':40s} {got['peak']:8.1f} MiB")
    print(f"{'lookup, 4-label host, listed':40s} {got['hit']:8.2f} us")
    print(f"{'lookup, 4-label host, not listed':40s} {got['miss']:8.2f} us")


if __name__ == "__main__":
    main()
