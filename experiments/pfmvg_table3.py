"""PFMVG Table 3: IoU of the stage ablation (no fine-tuning, stage 2 only, stage 1 only, both).
The same sweep gives Table 4 (`pfmvg_table4.py --runs DIR`).

    python experiments/pfmvg_table3.py                  # run the sweep, print and save the table
    python experiments/pfmvg_table3.py --scale tiny -- OVERRIDES   # tiny scale, runs on a CPU
    python experiments/pfmvg_table3.py --runs DIR       # assemble from an existing sweep
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import main

if __name__ == "__main__":
    main("pfmvg_table3", sys.argv[1:])
