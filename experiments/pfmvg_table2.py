"""PFMVG Table 2: per-category Dice, mean and wDice of the two-stage model (run shared with Table 1).

    python experiments/pfmvg_table2.py                  # run the sweep, print and save the table
    python experiments/pfmvg_table2.py --scale tiny -- OVERRIDES   # tiny scale, runs on a CPU
    python experiments/pfmvg_table2.py --runs DIR       # assemble from an existing sweep
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import main

if __name__ == "__main__":
    main("pfmvg_table2", sys.argv[1:])
