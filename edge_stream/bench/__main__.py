from edge_stream.bench.run import main

raise SystemExit(main())
