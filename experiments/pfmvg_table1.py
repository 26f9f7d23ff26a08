"""PFMVG Table 1: per-category IoU, mean and wIoU of the two-stage model on MS-CXR.
The same run gives Table 2 (`pfmvg_table2.py --runs DIR`).

    python experiments/pfmvg_table1.py                  # run the sweep, print and save the table
    python experiments/pfmvg_table1.py --scale tiny -- OVERRIDES   # tiny scale, runs on a CPU
    python experiments/pfmvg_table1.py --runs DIR       # assemble from an existing sweep
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import main

if __name__ == "__main__":
    main("pfmvg_table1", sys.argv[1:])
