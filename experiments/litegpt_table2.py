"""LiteGPT Table 2: global-label F1 ([vqa]) of the four models (sweep shared with tables 1, 3-5).

    python experiments/litegpt_table2.py                  # run the sweep, print and save the table
    python experiments/litegpt_table2.py --scale tiny -- OVERRIDES   # tiny scale, runs on a CPU
    python experiments/litegpt_table2.py --runs DIR       # assemble from an existing sweep
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import main

if __name__ == "__main__":
    main("litegpt_table2", sys.argv[1:])
