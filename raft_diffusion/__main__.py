import sys

from raft_diffusion.cli import main

sys.exit(main())
