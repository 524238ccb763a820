from fedmlp.cli import main

raise SystemExit(main())
