"""The environment variables through which an engine talks to the code it starts (trials, evaluation),
named once: the engines set them, `cdl.runtime` reads them. A leaf module, so the runtime's own
modules (trial, trial_events, keras_compat, determined_hooks, launch) can all import it without
importing each other.
"""

ENV_CONFIG = "CDL_TRIAL_CONFIG"
ENV_EVENTS = "CDL_TRIAL_EVENTS"  # JSON lines the local engine reads (validations, exit)
ENV_STOP = "CDL_TRIAL_STOP"
ENV_DATA_DIR = "CDL_DATA_DIR"
ENV_DATA_URI = "CDL_DATA_URI"
ENV_DATA_REPO = "CDL_DATA_REPO"
ENV_DATA_COMMIT = "CDL_DATA_COMMIT"
ENV_SEED = "CDL_SEED"
ENV_TRIAL_ID = "CDL_TRIAL_ID"
ENV_EXPERIMENT = "CDL_EXPERIMENT"
ENV_RUN_DIR = "CDL_RUN_DIR"
ENV_TRIAL_DIR = "CDL_TRIAL_DIR"
ENV_MAX_LENGTH = "CDL_MAX_LENGTH"  # "epochs:10" / "batches:500"; overrides the config (cluster use)
ENV_EARLY_STOPPING = "CDL_EARLY_STOPPING"  # JSON of the Experiment's early-stopping rules
ENV_ENTRYPOINT = "CDL_ENTRYPOINT"  # spec.model.entrypoint (a cluster trial: the experiment config's env)
ENV_METRIC = "CDL_METRIC"  # the searcher metric
ENV_SMALLER_IS_BETTER = "CDL_SMALLER_IS_BETTER"  # "true" / "false"
ENV_DATA_CACHE = "CDL_DATA_CACHE"  # where a cluster workload copies CDL_DATA_URI (default ./.cdl-data)
ENV_PACHD = "CDL_PACHD_ADDRESS"  # grpc://host:port of pachd, for pfs:// data
ENV_S3_ENDPOINT = "CDL_S3_ENDPOINT"  # S3/MinIO endpoint for s3:// data and artifacts
ENV_CODE_SHA256 = "CDL_CODE_SHA256"  # the code bundle a trial runs (spec.model.bundle.sha256)
ENV_CODE_COMMIT = "CDL_CODE_COMMIT"  # the git commit it was built from (spec.model.git.commit)

# The evaluation Job (python -m cdl.runtime.assess; docs/cluster-path.md)
ENV_PACKAGE_URI = "CDL_PACKAGE_URI"
ENV_PACKAGE_SHA256 = "CDL_PACKAGE_SHA256"  # also the predictor's: a package that differs is refused
ENV_EVAL_ENTRYPOINT = "CDL_EVAL_ENTRYPOINT"
ENV_COMPRESSION = "CDL_COMPRESSION"
ENV_RESULT_URI = "CDL_RESULT_URI"
ENV_VARIANT_URI = "CDL_VARIANT_URI"
