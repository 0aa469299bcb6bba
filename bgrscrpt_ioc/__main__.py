from bgrscrpt_ioc.cli import main

raise SystemExit(main())
