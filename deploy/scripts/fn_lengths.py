#!/usr/bin/env python3
"""Print Rust functions longer than a limit (lines from `fn` to its closing brace).

Usage: fn_lengths.py LIMIT PATH...   (exit 1 if any function is longer)
A plain brace counter that skips strings, chars and comments: good enough for rustfmt'd code.
"""
import re
import sys
from pathlib import Path

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def strip(line, state):
    """The line without strings, chars and comments; state carries block comments across lines."""
    out, i = [], 0
    while i < len(line):
        if state["block"]:
            end = line.find("*/", i)
            if end < 0:
                return "".join(out)
            state["block"], i = False, end + 2
            continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"], i = True, i + 2
            continue
        if c == '"' or (c == "r" and re.match(r'r#*"', line[i:])):
            m = re.match(r'r(#*)"', line[i:])
            if m:
                close = '"' + m.group(1)
                end = line.find(close, i + len(m.group(0)))
                i = len(line) if end < 0 else end + len(close)
                continue
            j = i + 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            i = j + 1
            continue
        if c == "'" and re.match(r"'(\\.|[^\\'])'", line[i:]):
            i += len(re.match(r"'(\\.|[^\\'])'", line[i:]).group(0))
            continue
        out.append(c)
        i += 1
    return "".join(out)


def functions(path):
    lines = path.read_text().splitlines()
    state = {"block": False}
    code = [strip(l, state) for l in lines]
    for start, l in enumerate(code):
        m = FN.match(l)
        if not m:
            continue
        depth, opened = 0, False
        for end in range(start, len(code)):
            for ch in code[end]:
                if ch == "{":
                    depth, opened = depth + 1, True
                elif ch == "}":
                    depth -= 1
            if opened and depth == 0:
                yield m.group(6), start + 1, end - start + 1
                break
            if not opened and code[end].rstrip().endswith(";"):
                break  # a declaration without a body


def main():
    limit = int(sys.argv[1])
    long = []
    for arg in sys.argv[2:]:
        for path in sorted(Path(arg).rglob("*.rs")) if Path(arg).is_dir() else [Path(arg)]:
            for name, line, n in functions(path):
                if n > limit:
                    long.append((n, f"{path}:{line}", name))
    for n, where, name in sorted(long, reverse=True):
        print(f"{n:5} lines  {name}  {where}")
    sys.exit(1 if long else 0)


if __name__ == "__main__":
    main()
