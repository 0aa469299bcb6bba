import sys

from bgrscrpt_ioc.ctl.cli import main

sys.exit(main())
