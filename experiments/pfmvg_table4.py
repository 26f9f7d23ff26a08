"""PFMVG Table 4: Dice of the stage ablation (sweep shared with Table 3).

    python experiments/pfmvg_table4.py                  # run the sweep, print and save the table
    python experiments/pfmvg_table4.py --scale tiny -- OVERRIDES   # tiny scale, runs on a CPU
    python experiments/pfmvg_table4.py --runs DIR       # assemble from an existing sweep
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import main

if __name__ == "__main__":
    main("pfmvg_table4", sys.argv[1:])
