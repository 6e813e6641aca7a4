import sys

from zhtune.cli import main

sys.exit(main())
