"""Train and test one recommender configuration: ``python train.py model=mf loss=mse data=ml-100k``.

The same command as ``recarena train ...`` (:mod:`recarena.commands.train`), kept for a source checkout.
"""

import sys

from recarena.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
