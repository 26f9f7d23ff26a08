"""LiteGPT Table 3: Accuracy@0.3/0.4/0.5 ([identify]) of the four models (sweep shared with tables 1-2, 4-5).

    python experiments/litegpt_table3.py                  # run the sweep, print and save the table
    python experiments/litegpt_table3.py --scale tiny -- OVERRIDES   # tiny scale, runs on a CPU
    python experiments/litegpt_table3.py --runs DIR       # assemble from an existing sweep
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import main

if __name__ == "__main__":
    main("litegpt_table3", sys.argv[1:])
