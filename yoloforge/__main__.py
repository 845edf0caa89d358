import sys

from yoloforge.cli import main

sys.exit(main())
