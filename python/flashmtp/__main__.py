import sys

from flashmtp.cli import main

sys.exit(main())
