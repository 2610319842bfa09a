import sys

from noisyfr.cli import main

sys.exit(main())
