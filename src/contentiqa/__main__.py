import sys

from contentiqa.cli.main import main

sys.exit(main())
