import sys

from vtviz.cli import main

sys.exit(main())
