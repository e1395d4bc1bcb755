"""Runs the worker package where no file can be written (a read-only container).

tagbench passes this file to `python3 -u -c`, followed by the package's modules as pairs of
arguments (`tagbench_worker.gemm`, its source), then `--` and the worker's own arguments. Each
argument stays far below Linux's 128 KiB limit on one argument; the modules are imported from
memory by a meta path finder, with their names in tracebacks.
"""

import importlib.abc
import importlib.util
import linecache
import sys

PACKAGE = "tagbench_worker"


class SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads the modules whose sources came on the command line."""

    def __init__(self, sources):
        self.sources = sources

    def find_spec(self, name, path=None, target=None):
        """A spec for one of our modules; None for every other name."""
        if name not in self.sources:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=name == PACKAGE)

    def create_module(self, spec):
        """The default module object."""
        return None

    def exec_module(self, module):
        """Runs the module's source, registered with linecache so that tracebacks show lines."""
        name = module.__name__
        source = self.sources[name]
        filename = f"<{name.replace('.', '/')}.py>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)


def run():
    """Installs the finder over the argument pairs and starts the worker."""
    args = sys.argv[1:]
    end = args.index("--")
    sources = dict(zip(args[:end:2], args[1:end:2]))
    sys.argv = [sys.argv[0], *args[end + 1 :]]
    sys.meta_path.insert(0, SourceFinder(sources))
    from tagbench_worker.protocol import main

    main()


run()
