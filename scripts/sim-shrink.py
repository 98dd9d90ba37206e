#!/usr/bin/env python3
"""Shrinks a failing simulation schedule to fewer faults (called by `scripts/sim.sh --shrink`).

A schedule file (target/sim-failures/{mix}-{seed}.schedule) holds the seed, every setting and
the faults: `episode = ...` lines in the cluster tests, `fault = ...` lines in the single-node
swarm. This script removes faults while the replay still fails with the same kind of violation
(the word before the first colon of the checker's first violation, e.g. LOST, or PANIC for a
panic inside a node), in the manner of delta debugging: halves, then quarters, and so on, then
one fault at a time until no single removal keeps the failure. A swarm fault that opens
something (crash, clog_node, clog_link, slow_disk) is removed together with the fault that
closes it (restart, unclog_node, unclog_link, fast_disk).

Every candidate is an ordinary replay: the settings other than the faults stay, the seed stays,
and a removed fault changes the run from that point on, deterministically. The result is
written next to the input as {name}.shrunk.schedule; replay it with `scripts/sim.sh --replay`.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

OPENS = {"crash": "restart", "clog_node": "unclog_node", "clog_link": "unclog_link", "slow_disk": "fast_disk"}


def units_of(lines):
    """Groups of line indices that are removed together."""
    units = []
    open_at = {}  # (closing word, args) -> indices into units of the faults it closes, oldest first
    for i, line in enumerate(lines):
        key, _, value = line.partition("=")
        key = key.strip()
        if key == "episode":
            units.append([i])
        elif key == "fault":
            words = value.split()
            if len(words) < 2:
                units.append([i])
                continue
            action, args = words[1], tuple(words[2:])
            if action in OPENS:
                # slow_disk's last word is the factor; fast_disk names only the broker.
                target = args[:1] if action == "slow_disk" else args
                open_at.setdefault((OPENS[action], target), []).append(len(units))
                units.append([i])
            elif open_at.get((action, args)):
                units[open_at[(action, args)].pop(0)].append(i)
            else:
                units.append([i])
    return units


def failure_kind(output, returncode):
    m = re.search(r"SIM-FAILURE seed=\d+ mix=\S+ schedule=\S+ first=([^:]+):", output)
    if m:
        return m.group(1).strip()
    if returncode != 0:
        return "PANIC"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    ap.add_argument("--filter", required=True, help="the sim test to run, e.g. cluster::faults")
    ap.add_argument("--seed", required=True)
    ap.add_argument("--release", action="store_true")
    args = ap.parse_args()

    with open(args.file) as f:
        original = f.read()
    lines = original.splitlines()
    units = units_of(lines)
    if not units:
        sys.exit(f"{args.file}: no episode or fault lines to remove")
    work = tempfile.mkdtemp(prefix="runnel-shrink-")
    candidate = os.path.join(work, "candidate.schedule")
    runs = 0

    def run(keep):
        nonlocal runs
        runs += 1
        drop = {i for u in units if u[0] not in keep for i in u} if keep is not None else set()
        text = "\n".join(line for i, line in enumerate(lines) if i not in drop) + "\n"
        with open(candidate, "w") as f:
            f.write(text)
        env = dict(os.environ, RUNNEL_SIM_REPLAY=candidate, MADSIM_TEST_SEED=args.seed, MADSIM_TEST_NUM="1")
        env.pop("RUNNEL_SIM_LOG", None)
        cmd = ["cargo", "simtest"] + (["--release"] if args.release else []) + [
            "--test", "sim", args.filter, "--", "--exact", "--nocapture"]
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return failure_kind(p.stdout, p.returncode), text

    try:
        kind, _ = run(None)
        if kind is None:
            sys.exit(f"{args.file} does not fail when replayed; nothing to shrink")
        print(f"original: {len(units)} faults, fails with {kind}", flush=True)
        keep = [u[0] for u in units]  # units are named by their first line
        best_text = original
        n = 2
        while len(keep) >= 1:
            size = max(1, len(keep) // n)
            chunks = [keep[i:i + size] for i in range(0, len(keep), size)]
            removed = False
            for c in chunks:
                trial = [u for u in keep if u not in c]
                k, text = run(set(trial))
                if k == kind:
                    keep, best_text, removed = trial, text, True
                    print(f"  {len(keep)} faults left, still {kind} (run {runs})", flush=True)
                    n = max(n - 1, 2)
                    break
            if not removed:
                if size == 1:
                    break
                n = min(n * 2, len(keep))
        out = re.sub(r"\.schedule$", "", args.file) + ".shrunk.schedule"
        header = (f"# shrunk by scripts/sim.sh --shrink from {len(units)} to {len(keep)} faults in {runs} runs; "
                  f"still fails with {kind}\n")
        with open(out, "w") as f:
            f.write(header + best_text)
        print(f"shrunk: {len(units)} -> {len(keep)} faults in {runs} runs; still {kind}")
        print(f"wrote {out}; replay: scripts/sim.sh --replay {out}{' --release' if args.release else ''}")
    finally:
        # A replay writes and then removes target/sim-failures/{mix}-{seed}.schedule; if that is
        # the file being shrunk, put it back.
        with open(args.file, "w") as f:
            f.write(original)


if __name__ == "__main__":
    main()
