-- twotower schema, version 1: the app's tables (names follow the app this serves) and the engine's own.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE OR REPLACE FUNCTION twotower_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- ---------------------------------------------------------------------------------------------------------
-- catalog
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE videos (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source              text NOT NULL CHECK (source <> ''),
    external_id         text NOT NULL CHECK (external_id <> ''),
    title               text NOT NULL,
    description         text,
    duration_seconds    integer CHECK (duration_seconds >= 0),
    price               numeric(12, 2) CHECK (price >= 0),
    maker               text,
    label               text,
    series              text,
    director            text,
    product_released_at timestamptz,
    thumbnail_url       text,
    sample_video_url    text,
    product_url         text,
    review_count        integer CHECK (review_count >= 0),
    review_average      real CHECK (review_average >= 0),
    is_active           boolean NOT NULL DEFAULT true,
    raw                 jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, external_id)
);
CREATE INDEX videos_released_idx ON videos (product_released_at);
CREATE INDEX videos_updated_idx ON videos (updated_at);
CREATE INDEX videos_maker_idx ON videos (maker);
CREATE TRIGGER videos_touch_updated_at BEFORE UPDATE ON videos
    FOR EACH ROW EXECUTE FUNCTION twotower_touch_updated_at();

CREATE TABLE tags (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE video_tags (
    video_id uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    tag_id   bigint NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
    PRIMARY KEY (video_id, tag_id)
);
CREATE INDEX video_tags_tag_idx ON video_tags (tag_id);

CREATE TABLE performers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE video_performers (
    video_id     uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    performer_id bigint NOT NULL REFERENCES performers (id) ON DELETE CASCADE,
    PRIMARY KEY (video_id, performer_id)
);
CREATE INDEX video_performers_performer_idx ON video_performers (performer_id);

-- ---------------------------------------------------------------------------------------------------------
-- swipes
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE user_video_decisions (
    user_id       uuid NOT NULL,
    video_id      uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    decision_type text NOT NULL CHECK (decision_type IN ('like', 'nope')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, video_id)
);
-- the user tower reads a user's most recent decisions on every request
CREATE INDEX user_video_decisions_recent_idx ON user_video_decisions (user_id, created_at DESC);
CREATE INDEX user_video_decisions_video_idx ON user_video_decisions (video_id);
CREATE INDEX user_video_decisions_created_idx ON user_video_decisions (created_at);

-- ---------------------------------------------------------------------------------------------------------
-- the engine's own tables
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE model_versions (
    version        text PRIMARY KEY CHECK (version ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
    status         text NOT NULL DEFAULT 'registered'
                   CHECK (status IN ('registered', 'building', 'ready', 'active', 'retired', 'failed')),
    embedding_dim  integer NOT NULL CHECK (embedding_dim BETWEEN 1 AND 4096),
    artifact_uri   text,
    manifest       jsonb NOT NULL DEFAULT '{}'::jsonb,
    metrics        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    activated_at   timestamptz
);
-- at most one active version: promote and rollback flip it in one transaction
CREATE UNIQUE INDEX model_versions_one_active ON model_versions ((true)) WHERE status = 'active';

CREATE TABLE model_deployments (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version          text NOT NULL REFERENCES model_versions (version),
    previous_version text REFERENCES model_versions (version),
    action           text NOT NULL CHECK (action IN ('promote', 'rollback')),
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- embeddings are keyed by model version: one "generation" per version, so a new one can be built while the
-- old one serves, and a rollback needs no recomputation. The column has no fixed dimension because
-- generations of different dimensions coexist; ANN indexes are per generation (partial, with a cast).
CREATE TABLE video_embeddings (
    model_version text NOT NULL REFERENCES model_versions (version) ON DELETE CASCADE,
    video_id      uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    embedding     vector NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_version, video_id)
);
CREATE INDEX video_embeddings_video_idx ON video_embeddings (video_id);

CREATE TABLE user_embeddings (
    model_version text NOT NULL REFERENCES model_versions (version) ON DELETE CASCADE,
    user_id       uuid NOT NULL,
    embedding     vector NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_version, user_id)
);
CREATE INDEX user_embeddings_user_idx ON user_embeddings (user_id);

CREATE TABLE jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text NOT NULL,
    model_version text REFERENCES model_versions (version) ON DELETE CASCADE,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    params        jsonb NOT NULL DEFAULT '{}'::jsonb,
    total_chunks  integer NOT NULL DEFAULT 0,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);
CREATE INDEX jobs_kind_status_idx ON jobs (kind, status);

-- checkpoints: a job is cut into chunks that workers claim with SELECT ... FOR UPDATE SKIP LOCKED
CREATE TABLE job_chunks (
    job_id      bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    chunk_no    integer NOT NULL,
    range_start text,
    range_end   text,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts    integer NOT NULL DEFAULT 0,
    worker      text,
    rows_done   integer NOT NULL DEFAULT 0,
    error       text,
    claimed_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (job_id, chunk_no)
);
CREATE INDEX job_chunks_pending_idx ON job_chunks (job_id, chunk_no) WHERE status <> 'done';

CREATE TABLE quality_reports (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_version text REFERENCES model_versions (version) ON DELETE CASCADE,
    passed        boolean NOT NULL,
    metrics       jsonb NOT NULL DEFAULT '{}'::jsonb,
    alerts        jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quality_reports_version_idx ON quality_reports (model_version, created_at DESC);

CREATE TABLE sync_state (
    source       text PRIMARY KEY,
    watermark    timestamptz,
    cursor       jsonb NOT NULL DEFAULT '{}'::jsonb,
    last_run_at  timestamptz,
    last_summary jsonb NOT NULL DEFAULT '{}'::jsonb
);
