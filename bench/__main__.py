"""Run the benchmarks: `python -m bench [--quick] [--out DIR]`."""

from .run import main

raise SystemExit(main())
