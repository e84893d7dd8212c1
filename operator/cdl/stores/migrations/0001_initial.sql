-- cdl 0001: the records the platform keeps in PostgreSQL.
-- Everything a resource produces is keyed by its namespace and name; free-form parts are JSONB.

-- ML Data: one row per labeled item of a DataPipeline output (Label Studio exports and automatic
-- labels). Re-exporting the same commit updates rows instead of duplicating them. A DataPipeline
-- may ask for its own table (spec.labeling.database.table): Database.ensure_labels_table creates it
-- with these same columns.
CREATE TABLE labels (
    namespace    text        NOT NULL,
    pipeline     text        NOT NULL,
    repo         text        NOT NULL,
    commit       text        NOT NULL,
    path         text        NOT NULL,
    label        text        NOT NULL,
    labeler      text,
    annotated_at timestamptz,
    split        text,
    source       text        NOT NULL DEFAULT 'labelstudio' CHECK (source IN ('labelstudio', 'auto')),
    project      text,
    task_id      bigint,
    exported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, pipeline, repo, commit, path)
);

-- Experiment registry: one row per run of an Experiment (a generation submitted to an engine).
CREATE TABLE experiments_runs (
    run_id      text        PRIMARY KEY,
    namespace   text        NOT NULL,
    experiment  text        NOT NULL,
    generation  bigint      NOT NULL DEFAULT 0,
    engine      text        NOT NULL,
    state       text        NOT NULL,
    spec        jsonb       NOT NULL DEFAULT '{}',
    data_repo   text,
    data_commit text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX experiments_runs_by_experiment ON experiments_runs (namespace, experiment, started_at);

CREATE TABLE trials (
    run_id          text        NOT NULL REFERENCES experiments_runs (run_id) ON DELETE CASCADE,
    trial_id        text        NOT NULL,
    hparams         jsonb       NOT NULL DEFAULT '{}',
    state           text        NOT NULL,
    stop_reason     text,
    metadata        jsonb       NOT NULL DEFAULT '{}',  -- framework, version, param count, layers, packages, seed
    wall_seconds    double precision,
    cpu_seconds     double precision,
    peak_rss_bytes  bigint,
    gpu_utilization double precision,
    best_metric     double precision,
    checkpoint_uuid text,
    checkpoint_uri  text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, trial_id)
);

CREATE TABLE trial_metrics (
    id          bigserial   PRIMARY KEY,
    run_id      text        NOT NULL,
    trial_id    text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('training', 'validation')),
    batches     bigint      NOT NULL,
    epoch       double precision,
    metrics     jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, trial_id, kind, batches),
    FOREIGN KEY (run_id, trial_id) REFERENCES trials (run_id, trial_id) ON DELETE CASCADE
);

-- Model registry index: version numbers increase per model name (Database.next_model_version).
CREATE TABLE model_versions (
    model           text        NOT NULL,
    version         integer     NOT NULL CHECK (version > 0),
    namespace       text,
    resource        text,
    stage           text        NOT NULL DEFAULT 'candidate'
                                CHECK (stage IN ('candidate', 'staging', 'production', 'archived')),
    artifact_uri    text,
    artifact_sha256 text,
    artifact_bytes  bigint,
    artifact_format text,
    metrics         jsonb,
    gates           jsonb,
    passed          boolean,
    report_uri      text,
    lineage         jsonb       NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    promoted_at     timestamptz,
    PRIMARY KEY (model, version)
);
CREATE INDEX model_versions_by_resource ON model_versions (namespace, resource);

-- Lineage: data commit -> experiment -> trial -> checkpoint -> model version -> deployment.
CREATE TABLE lineage_edges (
    id         bigserial   PRIMARY KEY,
    from_kind  text        NOT NULL,
    from_id    text        NOT NULL,
    to_kind    text        NOT NULL,
    to_id      text        NOT NULL,
    relation   text        NOT NULL,
    attrs      jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (from_kind, from_id, to_kind, to_id, relation)
);
CREATE INDEX lineage_edges_by_target ON lineage_edges (to_kind, to_id);

-- Scoring data: requests and answers of a Deployment (Model Monitoring reads a window of them).
CREATE TABLE scoring_data (
    id            bigserial        PRIMARY KEY,
    namespace     text             NOT NULL,
    deployment    text             NOT NULL,
    model_version text             NOT NULL,
    request       jsonb,
    response      jsonb,
    status_code   integer          NOT NULL,
    latency_ms    double precision NOT NULL,
    shadow        boolean          NOT NULL DEFAULT false,
    error         text,
    created_at    timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX scoring_data_window ON scoring_data (namespace, deployment, created_at);
