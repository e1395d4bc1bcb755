"""What this python process loaded: shared objects and Python distributions ("what differs")."""

import os
import sys


def mapped_objects():
    """The shared objects mapped into this process, each once, in the order first mapped."""
    seen, out = set(), []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                path = parts[5].strip() if len(parts) == 6 else ""
                name = os.path.basename(path)
                if not path.startswith("/") or path.endswith(" (deleted)"):
                    continue
                if (name.endswith(".so") or ".so." in name) and path not in seen:
                    seen.add(path)
                    out.append(path)
    except OSError:
        pass
    return out


def _used(dist, imported, loaded):
    """Whether this run imported one of the distribution's modules or loaded one of its shared
    objects, and the top-level names of its files."""
    used = False
    tops = set()
    for f in dist.files or []:
        parts = f.parts
        top = parts[0] if parts else ""
        if top and top not in ("..", "__pycache__"):
            tops.add(top)
        if used or top.endswith(".dist-info") or top == "..":
            continue
        package = len(parts) == 2 and parts[1] == "__init__.py" and top in imported
        module = len(parts) == 1 and top.endswith(".py") and top[:-3] in imported
        shared = (f.name.endswith(".so") or ".so." in f.name) and os.path.realpath(str(dist.locate_file(f))) in loaded
        used = package or module or shared
    return used, tops


def distributions(loaded, modules):
    """The Python distributions importable here, and whether this run imported one of their
    `modules` or loaded one of their shared objects (`loaded` paths; namespace packages such as
    `nvidia`, shared by several distributions, do not count as imported by themselves)."""
    import importlib.metadata as md

    loaded = {os.path.realpath(p) for p in loaded}
    imported = {name.split(".")[0] for name in modules}
    out, seen = [], set()
    for dist in md.distributions():
        name = dist.metadata["Name"] or ""
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        used, tops = _used(dist, imported, loaded)
        out.append(
            {
                "name": name,
                "version": dist.version or "",
                "imported": used,
                "location": str(dist.locate_file("")),
                "top_level": sorted(tops),
            }
        )
    return out


def components():
    """The reply to `components`: mapped shared objects and distributions."""
    maps = mapped_objects()
    return {"maps": maps, "distributions": distributions(maps, list(sys.modules))}
