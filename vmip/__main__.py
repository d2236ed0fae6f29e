from vmip.cli.main import main

raise SystemExit(main())
