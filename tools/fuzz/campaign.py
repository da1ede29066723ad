#!/usr/bin/env python3
"""Run one fuzz harness under atheris for a total time, restarting it after each crash.

    python tools/fuzz/campaign.py reader 1800        # fuzz_reader.py for 30 minutes

Uses tools/fuzz/corpus/seeds (made by make_corpus.py if missing) as the seed corpus and
tools/fuzz/corpus/<harness>/ as the working corpus; crashes, timeouts and out-of-memory
inputs go to tools/fuzz/crashes/. At the end it prints and appends to
tools/fuzz/crashes/campaign.jsonl the number of executions and every artifact.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = ["-max_len=8192", f"-dict={HERE / 'dcz.dict'}", "-timeout=60", "-rss_limit_mb=3072", "-print_final_stats=1",
         "-reload=60"]


def main() -> None:
    harness, total = sys.argv[1], float(sys.argv[2])
    extra = sys.argv[3:]
    seeds = HERE / "corpus" / "seeds"
    if not seeds.is_dir():
        subprocess.run([sys.executable, str(HERE / "make_corpus.py"), str(seeds)], check=True)
    work = HERE / "corpus" / harness
    crashes = HERE / "crashes"
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(exist_ok=True)
    log = crashes / f"{harness}.log"
    before = set(crashes.glob(f"{harness}-pycrash-*"))
    deadline = time.monotonic() + total
    execs, runs, artifacts = 0, 0, []
    while (left := deadline - time.monotonic()) > 5:
        cmd = [sys.executable, str(HERE / f"fuzz_{harness}.py"), *FLAGS, f"-max_total_time={int(left)}",
               f"-artifact_prefix={crashes}/{harness}-", *extra, str(work), str(seeds)]
        with open(log, "a") as f:
            start = f.tell()
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)  # streamed: tail -f the log to watch
        with open(log, errors="replace") as f:
            f.seek(start)
            out = f.read()
        runs += 1
        m = re.findall(r"stat::number_of_executed_units: (\d+)", out) or re.findall(r"^#(\d+)\s", out, re.M)
        execs += int(m[-1]) if m else 0
        found = re.findall(r"Test unit written to (\S+)", out)
        found += [str(q) for q in set(crashes.glob(f"{harness}-pycrash-*")) - before if str(q) not in artifacts + found]
        artifacts += found
        if p.returncode != 0 and not found:
            print(out[-3000:], file=sys.stderr)
            break
    summary = {"harness": harness, "seconds": total, "executions": execs, "processes": runs, "artifacts": artifacts}
    with open(crashes / "campaign.jsonl", "a") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
