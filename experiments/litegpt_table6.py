"""LiteGPT Table 6: [grounding] vs [identify] as the localization stage's identifier.

    python experiments/litegpt_table6.py                  # run the sweep, print and save the table
    python experiments/litegpt_table6.py --scale tiny -- OVERRIDES   # tiny scale, runs on a CPU
    python experiments/litegpt_table6.py --runs DIR       # assemble from an existing sweep
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import main

if __name__ == "__main__":
    main("litegpt_table6", sys.argv[1:])
