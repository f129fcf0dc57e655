-- what the API served, for the live like-rate of recommendations (C10): one row per answer (the videos in
-- order), for a sample of users (TWOTOWER_MONITOR_SERVED_SAMPLE), appended in batches by each server process,
-- read over a window, pruned after TWOTOWER_MONITOR_SERVED_RETENTION_DAYS.
CREATE TABLE served_recommendations (
    served_at     timestamptz NOT NULL DEFAULT now(),
    user_id       uuid NOT NULL,
    video_ids     uuid[] NOT NULL,
    model_version text,
    algorithm     text NOT NULL
);
CREATE INDEX served_recommendations_time_idx ON served_recommendations USING brin (served_at);
