from pib.cli import main

raise SystemExit(main())
