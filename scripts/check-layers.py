#!/usr/bin/env python3
"""Fails when the daemon's top-level modules import each other in a cycle.

Every `crate::<module>` path in non-test code under src/ is an edge from the file's top-level
module to <module>. The graph must be acyclic, so that shared types (the caller, audit events,
config sections, durations) sit at the bottom and import nothing above them, and a module can
be understood and tested from the ones below it. `app` and `cli` are the composition roots:
they may import anything, and nothing may import them.

Usage: scripts/check-layers.py [--graph]   (--graph prints every module's imports)
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
# Not part of the daemon's module graph: the binaries' entry points, and test-only helpers.
SKIP = {"main", "lib", "bin", "fuzzing"}
ROOTS = {"app", "cli"}
TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", re.S)


def strip_tests(text):
    """Drops inline `#[cfg(test)] mod x { ... }` blocks (brace-matched)."""
    out, pos = [], 0
    for m in TEST_MOD.finditer(text):
        if m.start() < pos:
            continue
        out.append(text[pos:m.start()])
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        pos = i
    out.append(text[pos:])
    return "".join(out)


def strip_comments(text):
    return re.sub(r"//[^\n]*", "", text)


def edges():
    graph = {}
    for dirpath, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
            top = rel[0]
            if top in SKIP or "tests" in rel or rel[-1].endswith("_tests"):
                continue
            text = strip_comments(strip_tests(open(path, encoding="utf-8").read()))
            targets = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
            for group in re.findall(r"crate::\{([^}]*)\}", text):
                targets |= set(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
            graph.setdefault(top, set()).update(t for t in targets if t != top and t not in SKIP)
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    graph = edges()
    if "--graph" in sys.argv:
        for m in sorted(graph):
            print(f"{m} -> {' '.join(sorted(graph[m])) or '(nothing)'}")
    failed = False
    for m in sorted(graph):
        bad = sorted(graph[m] & ROOTS) if m not in ROOTS else []
        if bad:
            failed = True
            print(f"{m} imports the composition root {', '.join(bad)}")
    for comp in cycles({m: graph[m] - ROOTS for m in graph}):
        failed = True
        print("import cycle between: " + ", ".join(comp))
        for m in comp:
            inside = sorted(graph[m] & set(comp))
            print(f"  {m} -> {' '.join(inside)}")
    if failed:
        print("\nMove the shared item down (into the lower module or a new small one) so the "
              "edge points one way.", file=sys.stderr)
        return 1
    print(f"module layers: {len(graph)} top-level modules, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
