"""`python -m cdl.simulation DATA_DIR KUBECONFIG SOURCE`: the cluster simulation's process (cluster.serve)."""

import sys
from pathlib import Path

from cdl.simulation.cluster import serve

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m cdl.simulation DATA_DIR KUBECONFIG SOURCE")
    serve(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve())
