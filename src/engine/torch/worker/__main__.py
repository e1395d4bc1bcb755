"""Entry point: `python3 -u DIR` runs this file with DIR first on sys.path (as a zipapp's)."""

from tagbench_worker.protocol import main

main()
