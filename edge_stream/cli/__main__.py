"""`python -m edge_stream.cli`: the `edge-stream` command without its console script.

(`python -m edge_stream.cli.main` runs the module twice, since the package imports it: runpy warns.)"""

from edge_stream.cli.main import main

raise SystemExit(main())
