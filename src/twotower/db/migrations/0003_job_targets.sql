-- a batch job's chunks cover videos or users: say which
ALTER TABLE job_chunks ADD COLUMN target text NOT NULL DEFAULT 'videos' CHECK (target IN ('videos', 'users'));
CREATE INDEX jobs_version_idx ON jobs (kind, model_version, created_at DESC);
