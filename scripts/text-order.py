#!/usr/bin/env python3
"""Writes the linker's function order for the release daemon from callgrind runs.

    text-order.py BINARY OUT STARTUP.callgrind [SERVING.callgrind ...]
    text-order.py --check BINARY ORDER STARTUP.callgrind

The first callgrind file is the daemon starting, answering its readiness health checks and
sitting idle; the others are the daemon serving requests. OUT lists the binary's functions
that the first run executed, those the serving runs spent least in first, then those only the
serving runs executed, those they spent most in first: one mangled name a line, for lld's
--symbol-ordering-file (build.rs).

--check reads ORDER instead of writing it, and fails when more than MAX_MISSING_STARTUP of the
functions start-up ran are not in it. Rust's symbol names change with the code (closure and
impl disambiguators, inlining), lld silently skips names it cannot find, and each function
left out can land anywhere in the text and fault in a 64 KiB window of its own at start-up.

Why: the kernel maps a file-backed page fault's whole 64 KiB neighbourhood ("fault-around").
Start-up code spread over the whole text (config, clap, Cedar's parser and validator, rustls,
tonic) made an idle daemon map most of it; packed together, it maps little more than it ran.
"""

import re
import subprocess
import sys

NAMED = re.compile(r"^(c?fn)=\((\d+)\)(?: (\S+))?")


def self_costs(callgrind_file):
    """Instructions each function executed itself, by mangled name (callgrind --demangle=no).

    Callgrind names a function once, `fn=(id) name`, then by `fn=(id)`; the cost line after a
    `calls=` line is the callee's inclusive cost and is not the caller's own.
    """
    names, costs = {}, {}
    current, after_call = None, False
    with open(callgrind_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = NAMED.match(line)
            if m:
                kind, ident, name = m.groups()
                if name:
                    names[ident] = name
                if kind == "fn":
                    current = names.get(ident)
                    costs.setdefault(current, 0)
                else:
                    costs.setdefault(names.get(ident), 0)
                continue
            if line.startswith("calls="):
                after_call = True
                continue
            fields = line.split()
            is_cost = len(fields) == 2 and fields[0][0] in "0123456789+-*" and fields[1].isdigit()
            if is_cost and current is not None:
                if not after_call:
                    costs[current] += int(fields[1])
                after_call = False
    costs.pop(None, None)
    return costs


def text_symbols(binary):
    """The binary's function symbols: name -> size in bytes."""
    out = subprocess.run(
        ["nm", "--defined-only", "-S", binary], check=True, capture_output=True, text=True
    ).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            sizes[parts[3]] = int(parts[1], 16)
    return sizes


# Start-up functions the order may lack before it counts as stale. Each lands wherever the
# linker puts it and can fault in a 64 KiB window of its own: an order lacking 24 (9.6 KB of
# code, mostly LTO-local copies whose `.NNNN` suffix moved) raised idle RSS from 10.2 to
# 12.2 MB, one lacking 57 the same. A freshly written order lacks 0 to 2 on a quiet machine
# (code start-up runs only sometimes), but at the end of a full test run one lacked 8 (1.2 KB)
# while a fresh clone's build of the same code lacked 0 three times: start-up under
# callgrind on a loaded machine takes paths a quiet one does not. 16 leaves room for that and
# still fails the stale orders measured above.
MAX_MISSING_STARTUP = 16


def startup_functions(binary, startup):
    """The binary's function sizes, and the names of those the start-up run executed."""
    sizes = text_symbols(binary)
    first = self_costs(startup).keys() & sizes.keys()
    if not first:
        sys.exit(f"{startup}: no function of {binary} in it (run callgrind with --demangle=no)")
    return sizes, first


def check(binary, order_path, startup):
    sizes, first = startup_functions(binary, startup)
    with open(order_path, encoding="utf-8") as f:
        listed = set(f.read().split())
    missing = sorted(first - listed, key=lambda n: -sizes[n])
    kb = sum(sizes[n] for n in missing) / 1e3
    print(
        f"{order_path}: {len(missing)} of the {len(first)} functions start-up ran are not in it "
        f"({kb:.1f} KB); at most {MAX_MISSING_STARTUP} may be"
    )
    for name in missing[:10]:
        print(f"  missing: {name} ({sizes[name]} bytes)")
    if len(missing) > MAX_MISSING_STARTUP:
        sys.exit(
            f"{order_path} is stale: the release daemon's idle RSS grows with every start-up "
            "function it lacks. Rewrite it with `bash scripts/text-order.sh` and commit it."
        )


def main(argv):
    if len(argv) == 5 and argv[1] == "--check":
        return check(*argv[2:])
    if len(argv) < 4:
        sys.exit(__doc__)
    binary, out_path, startup, *serving = argv[1:]
    sizes, first = startup_functions(binary, startup)
    hot = {}
    for f in serving:
        for name, cost in self_costs(f).items():
            if name in sizes:
                hot[name] = hot.get(name, 0) + cost
    later = hot.keys() - first
    # Start-up code that serving never runs comes first and the serving path's hottest code
    # sits in the middle, so the code every request runs is one contiguous stretch as well.
    order = sorted(first, key=lambda n: (hot.get(n, 0), n))
    order += sorted(later, key=lambda n: (-hot[n], n))
    with open(out_path, "w", encoding="utf-8") as out:
        for name in order:
            out.write(name + "\n")
    text = sum(sizes.values())
    print(
        f"{out_path}: {len(first)} start-up functions ({sum(sizes[n] for n in first) / 1e6:.2f} MB), "
        f"then {len(later)} serving ({sum(sizes[n] for n in later) / 1e6:.2f} MB), "
        f"of {len(sizes)} ({text / 1e6:.2f} MB)"
    )


if __name__ == "__main__":
    main(sys.argv)
