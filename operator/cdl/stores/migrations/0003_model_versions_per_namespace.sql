-- A namespace is a team's boundary: version numbers and stages are per (namespace, model), so
-- the same model name in two namespaces counts 1, 2, 3 ... in each (rows of a cdl that kept no
-- namespace are kept under '').
UPDATE model_versions SET namespace = '' WHERE namespace IS NULL;
ALTER TABLE model_versions ALTER COLUMN namespace SET DEFAULT '';
ALTER TABLE model_versions ALTER COLUMN namespace SET NOT NULL;
ALTER TABLE model_versions DROP CONSTRAINT model_versions_pkey;
ALTER TABLE model_versions ADD PRIMARY KEY (namespace, model, version);
DROP INDEX model_versions_by_resource;
CREATE INDEX model_versions_by_resource ON model_versions (namespace, resource);
