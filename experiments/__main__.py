"""`python -m experiments NAME ...` is `python -m experiments.run NAME ...`."""
import sys

from experiments.run import main

sys.exit(main())
