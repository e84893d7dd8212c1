"""The cluster simulation: fakes of the cluster's services that speak their real wire protocols
and run the workloads those services would run.

- determined.py: the Determined master's REST API; with a `TrialExecutor`, each trial runs through
  Determined's own prep_container / launch / harness entry points and reports back to it;
- pachd.py: pachd's gRPC API; with images, each datum runs the transform in its image's container;
- seldon.py: Seldon Core v1's controller on the API server; with images, each predictor runs
  seldon-core-microservice from the predictor image, behind a gateway;
- jobs.py: the Job controller and kubelet for the `batch/v1` Jobs cdl creates;
- images.py / containers.py: an image is the files its Dockerfile copies plus the packages it
  installs; a container runs from one with exactly its pod's env;
- cluster.py: all of them beside the devcluster, and the operator started as the Helm chart
  deploys it (`cdl up --engines cluster`).

Without images/executors the fakes only check requests (the engines' contract tests use that);
each module's docstring says what it checks and what it does not do.
"""
