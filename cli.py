"""What the command lines here share: argument errors as one line, not a usage dump."""

import argparse
import os
import sys


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the problem (exit status 2)."""

    def error(self, message):
        self.exit(2, f"error: {message} (python {os.path.basename(sys.argv[0] or self.prog)} --help "
                     "lists the options)\n")
