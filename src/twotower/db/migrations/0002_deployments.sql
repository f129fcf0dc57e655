-- Deployment bookkeeping: a version's embedding generation can be dropped ('archived') while its artifacts
-- stay in the store; failures keep their reason.
ALTER TABLE model_versions DROP CONSTRAINT model_versions_status_check;
ALTER TABLE model_versions ADD CONSTRAINT model_versions_status_check
    CHECK (status IN ('registered', 'building', 'ready', 'active', 'retired', 'archived', 'failed'));
ALTER TABLE model_versions
    ADD COLUMN generation_built_at timestamptz,
    ADD COLUMN retired_at          timestamptz,
    ADD COLUMN videos_embedded     integer,
    ADD COLUMN users_embedded      integer,
    ADD COLUMN error               text;
CREATE INDEX model_versions_status_idx ON model_versions (status, retired_at DESC);
CREATE INDEX model_deployments_created_idx ON model_deployments (created_at DESC);
