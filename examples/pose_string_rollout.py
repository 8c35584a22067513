"""Roll out a minWM pose string and write the video (same as `minwm-rollout --pose-string ...`).

    python examples/pose_string_rollout.py "w*16,l*16,a*8"
"""

import sys

from minwm_env.rollout import main

if __name__ == "__main__":
    pose_string = sys.argv[1] if len(sys.argv) > 1 else "w*16,l*16,a*8"
    main(["--pose-string", pose_string, "--out", "outputs/pose_string_rollout"])
