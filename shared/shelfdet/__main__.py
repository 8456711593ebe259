from shelfdet.commands.cli import main

raise SystemExit(main())
