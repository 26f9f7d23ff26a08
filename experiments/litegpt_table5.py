"""LiteGPT Table 5: text metrics of the [vqa] answers (sweep shared with tables 1-4).

    python experiments/litegpt_table5.py                  # run the sweep, print and save the table
    python experiments/litegpt_table5.py --scale tiny -- OVERRIDES   # tiny scale, runs on a CPU
    python experiments/litegpt_table5.py --runs DIR       # assemble from an existing sweep
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import main

if __name__ == "__main__":
    main("litegpt_table5", sys.argv[1:])
