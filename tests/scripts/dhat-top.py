#!/usr/bin/env python3
"""The top allocation sites of a dhat heap profile (the agent built with --features dhat-heap), without dh_view.

  dhat-top.py PROFILE.json [--top N] [--depth D] [--crate rkubelet]

Each allocation point of the profile is named by its first D frames in the crate (default rkubelet, the agent's own
code: where it asked for the memory, whatever library did the allocating), with the first frame outside the
allocator as context. Sites of the same name are added up. Three tables: the bytes live at the global peak (t-gmax),
the bytes live when the profile was written (t-end: at SIGUSR2 after a churn, or at exit), and the total bytes
allocated over the run.
"""
import argparse
import json
import re
import sys
from collections import defaultdict

SKIP = re.compile(
    r"^(alloc::|core::|std::|<alloc::|<core::|<std::|dhat::|<dhat::|__rust|hashbrown::|<hashbrown::|"
    r"<T as alloc::|<\[T\]|<str as|<&|<\(|<T as|<I as|<F as|bytes::bytes_mut::|<bytes::|alloc \(|realloc \()"
)


def frame_name(text):
    # "0x55d1...: rkubelet::api::events::x (agent/src/api/events.rs:12:5)" -> "rkubelet::api::events::x (events.rs:12)"
    text = re.sub(r"^0x[0-9a-f]+: ", "", text)
    m = re.match(r"^(.*?) \((.*?):(\d+):\d+\)$", text)
    if m:
        fn, path, line = m.groups()
        fn = re.sub(r"::h[0-9a-f]{16}$", "", fn)
        return f"{fn} ({path.rsplit('/', 1)[-1]}:{line})"
    return re.sub(r"::h[0-9a-f]{16}$", "", text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--crate", default="rkubelet")
    a = ap.parse_args()
    with open(a.profile) as f:
        d = json.load(f)
    frames = d["ftbl"]
    own = re.compile(rf"^(0x[0-9a-f]+: )?<?{re.escape(a.crate)}::")
    sites = defaultdict(lambda: [0, 0, 0, 0, 0])  # gb, eb, tb, tbk, mb
    for pp in d["pps"]:
        names = [frames[i] for i in pp["fs"]]
        mine = [frame_name(n) for n in names if own.match(n)]
        context = next((frame_name(n) for n in names if not SKIP.match(re.sub(r"^0x[0-9a-f]+: ", "", n))), "?")
        if mine:
            key = " <- ".join(mine[: a.depth])
            if context not in key:
                key += f"   [{context}]"
        else:
            key = f"(outside {a.crate}) {context}"
        s = sites[key]
        s[0] += pp.get("gb", 0)
        s[1] += pp.get("eb", 0)
        s[2] += pp.get("tb", 0)
        s[3] += pp.get("tbk", 0)
        s[4] += pp.get("mb", 0)
    mb = lambda b: f"{b / 1048576:8.3f} MB"
    total = lambda i: sum(s[i] for s in sites.values())
    print(f"profile {a.profile}: {d.get('cmd', '?')}")
    print(f"live at the global peak: {mb(total(0))}; live at the end: {mb(total(1))}; "
          f"allocated in all: {mb(total(2))} in {total(3)} blocks")
    for title, i in (("live at the global peak (t-gmax)", 0), ("live at the end (t-end)", 1),
                     ("allocated over the run", 2)):
        print(f"\n== top sites by bytes {title}")
        for key, s in sorted(sites.items(), key=lambda kv: -kv[1][i])[: a.top]:
            if s[i] == 0:
                break
            print(f"{mb(s[i])}  {key}")


if __name__ == "__main__":
    sys.exit(main())
