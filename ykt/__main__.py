import sys

from ykt.cli import main

sys.exit(main())
