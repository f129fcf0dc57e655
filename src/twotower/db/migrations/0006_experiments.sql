-- Online experiments (C15): a deployed but not promoted version ('candidate') answers a share of the users,
-- chosen by a keyed hash of (experiment key, user id); at most one experiment runs at a time.
ALTER TABLE model_versions DROP CONSTRAINT model_versions_status_check;
ALTER TABLE model_versions ADD CONSTRAINT model_versions_status_check
    CHECK (status IN ('registered', 'building', 'ready', 'candidate', 'active', 'retired', 'archived', 'failed'));

CREATE TABLE experiments (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    control_version   text NOT NULL REFERENCES model_versions (version),
    candidate_version text NOT NULL REFERENCES model_versions (version),
    share             double precision NOT NULL CHECK (share > 0 AND share < 1),
    hash_key          text NOT NULL,  -- the assignment's key: random per experiment, so arms differ between them
    status            text NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'stopped', 'promoted', 'guardrail')),
    started_at        timestamptz NOT NULL DEFAULT now(),
    stopped_at        timestamptz,
    stop_reason       text,
    started_by        text,
    stopped_by        text
);
CREATE UNIQUE INDEX experiments_one_running ON experiments ((true)) WHERE status = 'running';

-- each look at an experiment (status, the server's periodic check, the monitor): the figures over time
CREATE TABLE experiment_checks (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id bigint NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    verdict       text NOT NULL,
    result        jsonb NOT NULL
);
CREATE INDEX experiment_checks_idx ON experiment_checks (experiment_id, created_at);

-- which experiment and arm answered (NULL outside an experiment)
ALTER TABLE served_recommendations ADD COLUMN experiment_id bigint, ADD COLUMN arm text;
CREATE INDEX served_recommendations_experiment_idx ON served_recommendations (experiment_id, user_id)
    WHERE experiment_id IS NOT NULL;
