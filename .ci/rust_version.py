"""Fails unless Cargo.toml's rust-version is at least the highest rust-version declared by any
package in the resolved dependency graph (`cargo metadata` JSON on stdin)."""
import json
import sys


def version(v):
    parts = [int(x) for x in v.split(".")]
    return tuple((parts + [0, 0, 0])[:3])


meta = json.load(sys.stdin)
used = {node["id"] for node in meta["resolve"]["nodes"]}
root = meta["resolve"]["root"]
ours = next(p for p in meta["packages"] if p["id"] == root)
needed = max(
    (version(p["rust_version"]), p["name"])
    for p in meta["packages"]
    if p["id"] in used and p["id"] != root and p.get("rust_version")
)
have = version(ours["rust_version"])
print("rust-version %s; highest a dependency needs: %s (%s)"
      % (ours["rust_version"], ".".join(map(str, needed[0])), needed[1]))
if have < needed[0]:
    print("rust-version is lower than what the dependencies need", file=sys.stderr)
    sys.exit(1)
