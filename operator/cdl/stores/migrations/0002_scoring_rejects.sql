-- Scoring rows PostgreSQL refused (a value it cannot hold, a request too deep for jsonb ...):
-- set aside here with the refusal, so one bad row never blocks the rows behind it.
CREATE TABLE scoring_rejects (
    id            bigserial   PRIMARY KEY,
    namespace     text        NOT NULL,
    deployment    text        NOT NULL,
    model_version text        NOT NULL,
    row_json      text        NOT NULL,
    error         text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scoring_rejects_by_deployment ON scoring_rejects (namespace, deployment, created_at);
