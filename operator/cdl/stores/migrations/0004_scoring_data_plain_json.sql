-- Scoring Data rows are written once per request and read back whole: keep them as JSON text
-- (validated, not converted) stored without compression. Measured on the reference machine with a
-- 22 KB request (5,000 numbers) per row, PostgreSQL's CPU per COPY'd row: jsonb with the default
-- pglz compression 1.6 ms, uncompressed json 0.18 ms, at twice the disk of compressed jsonb
-- (25 MB against 12.6 MB per 1,000 rows). On a small machine that CPU is taken from the model
-- servers; disk is cheaper. Nothing queries inside these documents.
ALTER TABLE scoring_data ALTER COLUMN request TYPE json USING request::json;
ALTER TABLE scoring_data ALTER COLUMN response TYPE json USING response::json;
ALTER TABLE scoring_data ALTER COLUMN request SET STORAGE EXTERNAL;
ALTER TABLE scoring_data ALTER COLUMN response SET STORAGE EXTERNAL;
