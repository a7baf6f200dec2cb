"""One Verilog module per distinct module body: merge the identical copies Amaranth emits.

Amaranth's Verilog back end writes one module per instance (``\\core.mac.dot0``, ``\\core.mac.dot1``,
...) even when the instances are the same circuit, so a core of PE lanes carries PE copies of each
lane module. ``share_modules`` keeps one module per distinct body and points every instance at it:
a simulator (Verilator) then compiles each lane type once instead of once per lane, and the file
gets smaller. The circuit is unchanged: only module *type* names change, instance names and every
net stay as they were, so hierarchical paths (``core.mac.dot3.w``) still resolve.

Contract on the input: Verilog as ``amaranth.back.verilog.convert`` writes it (one ``module`` ...
``endmodule`` block per module, ``(* ... *)`` attribute lines directly above its header, an
instance's module name as the first token of its line). Two modules are merged when their text is
identical apart from their own name and the numbers of yosys' ``\\$auto$...$N`` names (module-local
nets numbered across the whole file; compared as if each module's were numbered from 1); merging repeats until no two modules are identical (merged
children can make their parents identical). A merged module gets a plain identifier: its members' path with the lane
numbers dropped (``\\core.mac.dot0`` .. ``\\core.mac.dot27`` -> ``core_mac_dot``) when they agree, else
its first member's path (plain identifiers can be Verilator hierarchical blocks; escaped ones cannot).
"""
from __future__ import annotations

import re

__all__ = ["share_modules", "instances"]

_HEADER = re.compile(r"module\s+(\\\S+|[A-Za-z_][\w$]*)")
_AUTO = re.compile(r"(\\\$auto\$\S*?\$)(\d+)(?=\s)")


def _renumber(lines: list[str]) -> list[str]:
    """The module's ``\\$auto$...$N`` names numbered 1, 2, ... in order of first appearance (they are
    local to the module, so this changes no circuit)."""
    numbers: dict[str, int] = {}

    def sub(m: re.Match) -> str:
        key = m.group(0)
        if key not in numbers:
            numbers[key] = len(numbers) + 1
        return f"{m.group(1)}{numbers[key]}"

    return [_AUTO.sub(sub, line) for line in lines]


def _split(text: str) -> tuple[list, dict[str, list[str]]]:
    """The text as a list of pieces: plain strings, or module names standing for their block; and
    {name: lines of its block (attribute lines, header .. endmodule)}."""
    pieces: list = []
    modules: dict[str, list[str]] = {}
    pending: list[str] = []   # attribute lines that may belong to the next module
    current: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if current is not None:
            current.append(line)
            if line.strip() == "endmodule":
                current = None
            continue
        stripped = line.lstrip()
        m = _HEADER.match(stripped) if stripped.startswith("module") else None
        if m:
            name = m.group(1)
            current = [*pending, line]
            pending = []
            if name in modules:
                raise ValueError(f"module {name} is defined twice")
            modules[name] = current
            pieces.append(name)
        elif stripped.startswith("(*"):
            pending.append(line)
        else:
            pieces.extend(pending)
            pending = []
            pieces.append(line)
    if current is not None:
        raise ValueError("unterminated module (no endmodule)")
    pieces.extend(pending)
    return pieces, modules


def _with_name(lines: list[str], old: str, new: str) -> list[str]:
    """The block with its header's name replaced (escaped names keep their closing blank)."""
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith("module") and (m := _HEADER.match(stripped)) and m.group(1) == old:
            indent = line[:len(line) - len(stripped)]
            rest = stripped[m.end():]
            if new.startswith("\\") and not rest[:1].isspace():
                rest = " " + rest
            line = f"{indent}module {new}{rest}"
        out.append(line)
    return out


def _retarget(lines: list[str], mapping: dict[str, str]) -> list[str]:
    """Instances of a mapped module (its name the first token of the line) point at the new name."""
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped[:1] in ("\\",) or stripped[:1].isalpha() or stripped[:1] == "_":
            token = stripped.split(None, 1)[0] if stripped.strip() else ""
            if token in mapping and not stripped.startswith("module"):
                indent = line[:len(line) - len(stripped)]
                line = indent + mapping[token] + stripped[len(token):]
        out.append(line)
    return out


def _plain(name: str) -> str:
    """A plain Verilog identifier for a module path: ``\\core.mac.dot`` -> ``core_mac_dot`` (no double
    underscores: Verilator mangles them, and its hierarchical blocks then miss the module)."""
    out = re.sub(r"[^A-Za-z0-9_]+", "_", name.lstrip("\\"))
    out = re.sub(r"_+", "_", out).strip("_") or "m"
    return out if not out[0].isdigit() else "m_" + out


def _merged_name(members: list[str], taken: set[str]) -> str:
    """A plain identifier: the members' common path with lane numbers dropped (``\\a.dot3.mul`` ->
    ``a_dot_mul``) if it is the same for all, else the first member's path; ``_2``, ``_3``, ... appended
    while it is taken."""
    def strip(n: str) -> str:
        return re.sub(r"(?<=[A-Za-z_])\d+(?=\.|$)", "", n)

    cands = {strip(n) for n in members}
    base = _plain(cands.pop() if len(cands) == 1 else members[0])
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def instances(text: str) -> dict[str, list[str]]:
    """{module defined in ``text``: the modules that instantiate it, once per instance}."""
    _pieces, modules = _split(text)
    out: dict[str, list[str]] = {n: [] for n in modules}
    for parent, lines in modules.items():
        for line in lines[1:]:
            stripped = line.lstrip()
            if not stripped.strip() or stripped.startswith("module"):
                continue
            token = stripped.split(None, 1)[0]
            if token in out and token != parent:
                out[token].append(parent)
    return out


def share_modules(text: str) -> str:
    """``text`` with identical modules merged into one (module docstring); the same text when no
    two modules are identical."""
    pieces, modules = _split(text)
    while True:
        groups: dict[str, list[str]] = {}
        for name, lines in modules.items():
            key = "".join(_renumber(_with_name(lines, name, "\\@SELF@")))
            groups.setdefault(key, []).append(name)
        dup = [g for g in groups.values() if len(g) > 1]
        if not dup:
            break
        mapping: dict[str, str] = {}
        taken = set(modules)
        for members in dup:
            new = _merged_name(members, taken - set(members))
            taken.add(new)
            for n in members:
                mapping[n] = new
        merged: dict[str, list[str]] = {}
        renamed_pieces = []
        for p in pieces:
            if p in modules:
                new = mapping.get(p, p)
                if new in merged:
                    continue  # a later copy of a merged module: dropped
                merged[new] = _with_name(modules[p], p, new) if new != p else modules[p]
                renamed_pieces.append(new)
            else:
                renamed_pieces.append(p)
        modules = {n: _retarget(lines, mapping) for n, lines in merged.items()}
        pieces = renamed_pieces
    return "".join("".join(modules[p]) if p in modules else p for p in pieces)
