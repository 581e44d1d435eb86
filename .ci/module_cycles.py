#!/usr/bin/env python3
"""Fails when the local backend's top-level modules import each other in a loop.

The backend reads top-down (HTTP -> handlers -> app state -> runtime -> system calls); a
module of src/local that imports, directly or through others, a module that imports it back
breaks that. An import is a path naming a sibling module: `super::x` (with as many `super`
as the file is deep), `use super::{x, ...}`, or `crate::local::x`. Unit-test modules are
left out: tests may reach anywhere.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "local")


def top_module(path):
    first = os.path.relpath(path, ROOT).split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def main():
    tops = {n[:-3] if n.endswith(".rs") else n for n in os.listdir(ROOT) if n != "mod.rs"}
    edges = {t: {} for t in tops}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            path = os.path.join(dirpath, f)
            if not f.endswith(".rs") or path == os.path.join(ROOT, "mod.rs"):
                continue
            me = top_module(path)
            src = open(path, encoding="utf-8").read()
            src = re.split(r"#\[cfg\(test\)\]\s*mod tests", src)[0]
            depth = len(os.path.relpath(path, ROOT).split(os.sep)) - 1
            if f == "mod.rs":
                depth -= 1
            named = set(re.findall(r"crate::local::(\w+)", src))
            for m in re.finditer(r"\b((?:super::)+)(\w+)", src):
                if m.group(1).count("super::") == depth + 1:
                    named.add(m.group(2))
            for m in re.finditer(r"\b((?:super::)+)\{([^}]*)\}", src):
                if m.group(1).count("super::") == depth + 1:
                    named.update(re.findall(r"\b(\w+)\b", m.group(2)))
            for other in named & tops - {me}:
                edges[me].setdefault(other, set()).add(os.path.relpath(path, ROOT))
    # strongly connected components (Tarjan)
    index, low, stack, on, comps = {}, {}, [], set(), []
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            comps.append(sorted(comp))

    for v in sorted(tops):
        if v not in index:
            visit(v)
    cycles = [c for c in comps if len(c) > 1]
    for c in cycles:
        print("module cycle in src/local: " + ", ".join(c))
        for a in c:
            for b in c:
                if b in edges[a]:
                    print(f"  {a} -> {b} (in {', '.join(sorted(edges[a][b]))})")
    if cycles:
        sys.exit(1)
    print(f"no module cycles among the {len(tops)} modules of src/local")


if __name__ == "__main__":
    main()
