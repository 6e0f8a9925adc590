import sys

from siattn.cli import main

sys.exit(main())
