"""LiteGPT Table 1: finding / no-finding precision, recall, F1 ([vqa]) of the four models.
One sweep of the four models serves tables 1-5: run it once, then `--runs DIR` for the others.

    python experiments/litegpt_table1.py                  # run the sweep, print and save the table
    python experiments/litegpt_table1.py --scale tiny -- OVERRIDES   # tiny scale, runs on a CPU
    python experiments/litegpt_table1.py --runs DIR       # assemble from an existing sweep
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import main

if __name__ == "__main__":
    main("litegpt_table1", sys.argv[1:])
