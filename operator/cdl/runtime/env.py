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
