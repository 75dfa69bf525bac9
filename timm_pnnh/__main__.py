import sys

from timm_pnnh.cli import main

sys.exit(main())
