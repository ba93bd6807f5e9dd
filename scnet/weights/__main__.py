import sys

from scnet.weights.fetch import main

sys.exit(main())
